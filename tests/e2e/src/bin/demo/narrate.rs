//! What a demo prints while it runs, and the outcome it hands back to the runner.

use serde_json::Value;

/// What a demo did and what proved it, in one plain sentence each (the runner adds the idea).
pub struct Outcome {
    pub did: String,
    pub proved: String,
}

impl Outcome {
    pub fn new(did: impl Into<String>, proved: impl Into<String>) -> Self {
        Self {
            did: did.into(),
            proved: proved.into(),
        }
    }
}

/// A step the demo takes now.
pub fn say(text: &str) {
    println!("\n▶ {text}");
}

/// Where to look, and what it means.
pub fn look(text: &str) {
    println!("  look for: {text}");
}

/// A value as the system answered it.
pub fn show(label: &str, value: &Value) {
    println!("  {label}: {value}");
}

/// A checked fact.
pub fn ok(text: &str) {
    println!("  ✔ {text}");
}
