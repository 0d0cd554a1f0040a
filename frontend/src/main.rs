//! The Borscht web app: Leptos client-side rendering, built by Trunk.
//!
//! - [`connection`]: the `/ws` WebSocket, its state, requests and automatic reconnects.
//! - [`i18n`]: Russian first, English on a switch; [`storage`]: localStorage, history.
//! - [`host`]: messages to a page that embeds the widget.
//! - [`components`]: one file per piece of the screen.

mod components;
mod connection;
mod host;
mod i18n;
mod storage;

use components::app::App;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
