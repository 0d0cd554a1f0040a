use leptos::prelude::*;

use crate::connection::ConnectionState;
use crate::i18n::use_lang;

/// A small badge telling whether the server is reachable; announced to screen readers.
#[component]
pub fn ConnectionStatus(state: ReadSignal<ConnectionState>) -> impl IntoView {
    let lang = use_lang();
    view! {
        <p
            id="connection-status"
            class="connection-status"
            role="status"
            aria-live="polite"
            data-state=move || state.get().key()
        >
            {move || state.get().label(lang.get())}
        </p>
    }
}
