//! Renders the deposit confirmation from the event alone (event-carried state transfer: no
//! lookups in other services), as a subject, a plain-text body and an HTML body.
//!
//! Everything that came from a customer (the holder name) is untrusted: control characters are
//! replaced in both bodies, and every interpolated value is HTML-escaped in the HTML body.

use eventbank_events::{DepositCompleted, Money};
use std::fmt::Write as _;

/// Domain of every Message-ID this service writes.
pub const MESSAGE_ID_DOMAIN: &str = "eventbank.example";

/// A rendered confirmation, ready to be stored as a `queued` email (and read back, columns of
/// the same names, to be sent).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Rendered {
    pub to_name: String,
    pub to_address: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub message_id: String,
}

/// The Message-ID of the confirmation for `event_id`. Derived, never random, so every attempt
/// to send the same confirmation carries the same id and a downstream can recognise a resend.
pub fn message_id(event_id: uuid::Uuid) -> String {
    format!("<{event_id}@{MESSAGE_ID_DOMAIN}>")
}

/// Renders the confirmation for one deposit.
pub fn render(event: &DepositCompleted) -> Rendered {
    let amount = Money {
        minor: event.amount_minor,
        currency: event.currency,
    }
    .display();
    let account = mask_account(event.account_id.as_str());
    let name = clean(event.account.holder_name.trim());
    let when = event
        .occurred_at
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    let deposit_id = event.deposit_id.to_string();
    let subject = format!("Deposit of {amount} received");

    let greeting = if name.is_empty() {
        "Hello,".to_owned()
    } else {
        format!("Hello {name},")
    };
    let body_text = format!(
        "{greeting}\n\
         \n\
         We received a deposit of {amount} into your account {account}.\n\
         \n\
         Amount:     {amount}\n\
         Account:    {account}\n\
         Deposit id: {deposit_id}\n\
         Time:       {when}\n\
         \n\
         If you did not expect this deposit, please contact us.\n\
         \n\
         eventbank\n"
    );

    let mut body_html = String::new();
    // `write!` into a String cannot fail; the result is ignored for that reason.
    let _ = write!(
        body_html,
        "<!DOCTYPE html>\n\
         <html><head><meta charset=\"utf-8\"><title>{subject}</title></head>\n\
         <body style=\"font-family: sans-serif\">\n\
         <p>{greeting}</p>\n\
         <p>We received a deposit of <strong>{amount}</strong> into your account {account}.</p>\n\
         <table>\n\
         <tr><th align=\"left\">Amount</th><td>{amount}</td></tr>\n\
         <tr><th align=\"left\">Account</th><td>{account}</td></tr>\n\
         <tr><th align=\"left\">Deposit id</th><td>{deposit_id}</td></tr>\n\
         <tr><th align=\"left\">Time</th><td>{when}</td></tr>\n\
         </table>\n\
         <p>If you did not expect this deposit, please contact us.</p>\n\
         <p>eventbank</p>\n\
         </body></html>\n",
        subject = escape_html(&subject),
        greeting = escape_html(&greeting),
        amount = escape_html(&amount),
        account = escape_html(&account),
        deposit_id = escape_html(&deposit_id),
        when = escape_html(&when),
    );

    Rendered {
        to_name: name,
        to_address: event.account.email.trim().to_owned(),
        subject,
        body_text,
        body_html,
        message_id: message_id(event.event_id),
    }
}

/// Masks an account number, keeping only its tail: `ACC-0042` becomes `****0042`. ASCII on
/// purpose, so that bodies stay 7-bit and readable in any mail client. Very short numbers keep
/// at most half their characters, so that a mask never shows the whole number.
pub fn mask_account(account_id: &str) -> String {
    let chars: Vec<char> = account_id.chars().collect();
    let keep = (chars.len() / 2).min(4);
    let tail: String = chars[chars.len() - keep..].iter().collect();
    format!("****{tail}")
}

/// Escapes the five characters that are special in HTML text and attribute values.
pub fn escape_html(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for ch in raw.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// Replaces control characters (CR, LF, NUL, ...) with spaces: a holder name is one line of
/// text, and a newline in it must not be able to forge lines in the plain-text body.
fn clean(raw: &str) -> String {
    raw.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
