//! The Borscht web app: Leptos client-side rendering, built by Trunk.
//!
//! - [`connection`]: the `/ws` WebSocket, its state, requests and automatic reconnects.
//! - [`i18n`]: Russian first, English on a switch; [`storage`]: localStorage, history.
//! - [`host`]: messages to a page that embeds the widget; [`http`]: the HTTP API's
//!   calls (teaching, the admin page); [`teach`]: examples sent to teach the model.
//! - [`components`]: one file per piece of the screen.

mod components;
mod connection;
mod host;
mod http;
mod i18n;
mod storage;
mod teach;

use components::app::App;

fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}
