use leptos::prelude::*;

use super::camera::Camera;
use super::connection_status::ConnectionStatus;
use crate::connection::Connection;

/// The page: header with the server connection, then the capture screen.
#[component]
pub fn App() -> impl IntoView {
    let connection = Connection::open();
    view! {
        <header class="top-bar">
            <h1 class="brand">"Borscht"</h1>
            <ConnectionStatus state=connection.state />
        </header>
        <main class="screen">
            <Camera />
        </main>
    }
}
