use std::fmt;

/// One of the five services.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Svc {
    Deposit,
    Account,
    Email,
    Interest,
    Compliance,
}

impl Svc {
    /// All five services.
    pub const ALL: [Svc; 5] = [
        Svc::Deposit,
        Svc::Account,
        Svc::Email,
        Svc::Interest,
        Svc::Compliance,
    ];

    /// The four services that consume `DepositCompleted` (each has its own queues).
    pub const CONSUMERS: [Svc; 4] = [Svc::Account, Svc::Email, Svc::Interest, Svc::Compliance];

    /// The binary name, also used in database and broker names: `deposit`, `account`, ...
    pub fn name(self) -> &'static str {
        match self {
            Svc::Deposit => "deposit",
            Svc::Account => "account",
            Svc::Email => "email",
            Svc::Interest => "interest",
            Svc::Compliance => "compliance",
        }
    }

    /// Whether this service consumes events (everything but `deposit`).
    pub fn is_consumer(self) -> bool {
        self != Svc::Deposit
    }
}

impl fmt::Display for Svc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
