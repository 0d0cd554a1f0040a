use leptos::prelude::*;

use crate::connection::ConnectionState;
use crate::i18n::use_lang;

/// A dot and a word: whether the server is reachable (the server's version on hover).
#[component]
pub fn ConnectionStatus(state: ReadSignal<ConnectionState>) -> impl IntoView {
    let lang = use_lang();
    view! {
        <p
            id="connection-status"
            class="connection-status"
            data-state=move || state.get().key()
            title=move || state.get().details()
        >
            {move || state.get().label(lang.get())}
        </p>
    }
}
