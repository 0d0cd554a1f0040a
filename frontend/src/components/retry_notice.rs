//! Beside a request: why it waits to be sent again ("reconnecting…", or a busy server's
//! countdown), so a user knows it is not lost and need not press again.

use borscht_protocol::RequestId;
use leptos::prelude::*;

use crate::connection::{Connection, Retry};
use crate::i18n::{use_lang, Lang};

#[component]
pub fn RetryNotice(connection: Connection, request: RwSignal<Option<RequestId>>) -> impl IntoView {
    let lang = use_lang();
    let retry = move || request.get().and_then(|id| connection.retry(id));
    view! {
        <p class="retry-notice status-line" role="status" class:hidden=move || retry().is_none()
            data-retry=move || match retry() {
                Some(Retry::Reconnecting) => "reconnecting",
                Some(Retry::Busy { .. }) => "busy",
                None => "",
            }>
            {move || retry().map(|retry| text(retry, lang.get())).unwrap_or_default()}
        </p>
    }
}

fn text(retry: Retry, lang: Lang) -> String {
    match (retry, lang) {
        (Retry::Reconnecting, Lang::Ru) => "Переподключаемся… запрос отправим снова.".into(),
        (Retry::Reconnecting, Lang::En) => "Reconnecting… the request will be sent again.".into(),
        (Retry::Busy { seconds, attempt, of }, Lang::Ru) => {
            format!("Сервер занят — пробуем снова через {seconds} с (попытка {attempt} из {of}).")
        }
        (Retry::Busy { seconds, attempt, of }, Lang::En) => {
            format!("The server is busy — trying again in {seconds} s (try {attempt} of {of}).")
        }
    }
}
