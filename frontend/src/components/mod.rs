pub mod app;
pub mod camera;
pub mod connection_status;
