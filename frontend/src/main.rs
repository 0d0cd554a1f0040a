//! The Borscht web app: Leptos client-side rendering, built by Trunk.
//!
//! - [`connection`]: the `/ws` WebSocket, its state and automatic reconnects.
//! - [`components`]: one file per piece of the screen.

mod components;
mod connection;

use components::app::App;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
