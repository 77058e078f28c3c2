//! The confirmation is rendered from the event alone: amount, masked account, escaping.

use crate::helpers::{alice, event};
use email::render::{escape_html, mask_account, render};

#[test]
fn amounts_are_formatted_for_their_currency() {
    let cases = [
        ("USD", 123_450, "Deposit of 1,234.50 USD received"),
        ("JPY", 1_500_000, "Deposit of 1,500,000 JPY received"),
        ("BHD", 1_234_567, "Deposit of 1,234.567 BHD received"),
        ("USD", 5, "Deposit of 0.05 USD received"),
    ];
    for (currency, minor, subject) in cases {
        let rendered = render(&event(
            "ACC-0042",
            minor,
            currency,
            "Alice",
            "a@example.com",
        ));
        assert_eq!(rendered.subject, subject);
        let amount = subject
            .trim_start_matches("Deposit of ")
            .trim_end_matches(" received");
        assert!(
            rendered.body_text.contains(amount),
            "{}",
            rendered.body_text
        );
        assert!(
            rendered.body_html.contains(amount),
            "{}",
            rendered.body_html
        );
    }
}

#[test]
fn the_account_number_is_masked_to_its_last_four_characters() {
    assert_eq!(mask_account("ACC-0042"), "****0042");
    assert_eq!(mask_account("ACC-1234567"), "****4567");
    // A very short number never appears whole.
    assert_eq!(mask_account("AB1"), "****1");

    let rendered = render(&alice(10_000));
    for body in [&rendered.body_text, &rendered.body_html] {
        assert!(body.contains("****0042"), "{body}");
        assert!(!body.contains("ACC-0042"), "the full number leaks: {body}");
    }
    assert!(!rendered.subject.contains("ACC-0042"));
}

#[test]
fn the_body_greets_the_holder_and_names_the_deposit_and_time() {
    let e = alice(10_000);
    let rendered = render(&e);
    assert!(rendered.body_text.starts_with("Hello Alice Example,"));
    assert!(rendered.body_text.contains(&e.deposit_id.to_string()));
    assert!(rendered.body_text.contains("2025-03-14 09:26:53 UTC"));
    assert!(rendered.body_html.contains("<p>Hello Alice Example,</p>"));
    assert!(rendered.body_html.contains(&e.deposit_id.to_string()));
    assert_eq!(rendered.to_address, "alice@example.com");
    assert_eq!(rendered.to_name, "Alice Example");
    assert_eq!(
        rendered.message_id,
        format!("<{}@eventbank.example>", e.event_id)
    );
    // Derived, never random: a resend of the same confirmation carries the same id.
    assert_eq!(render(&e).message_id, rendered.message_id);
    assert_ne!(render(&alice(10_000)).message_id, rendered.message_id);
}

#[test]
fn a_hostile_holder_name_is_escaped_in_html() {
    let hostile = "<script>alert(\"pwned\")</script> & 'Co'";
    let rendered = render(&event(
        "ACC-0042",
        100,
        "USD",
        hostile,
        "mallory@example.com",
    ));
    assert!(
        !rendered.body_html.contains("<script>"),
        "{}",
        rendered.body_html
    );
    assert!(
        rendered
            .body_html
            .contains("&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &#39;Co&#39;"),
        "{}",
        rendered.body_html
    );
    // Plain text is not HTML: the name appears as written.
    assert!(rendered.body_text.contains(hostile));
    assert_eq!(escape_html("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&#39;");
}

#[test]
fn control_characters_in_the_holder_name_cannot_forge_lines() {
    let rendered = render(&event(
        "ACC-0042",
        100,
        "USD",
        "Eve\r\nAmount: 1,000,000.00 USD",
        "eve@example.com",
    ));
    assert!(
        rendered
            .body_text
            .starts_with("Hello Eve  Amount: 1,000,000.00 USD,\n")
    );
    assert!(!rendered.to_name.contains('\n'));
}
