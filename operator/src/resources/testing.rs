//! Fixtures for the builder tests: the quickstart's MailDomain.

use crate::api::MailDomain;
use crate::manifest::{load_str, Inputs};

/// The quickstart example's inputs.
pub fn quickstart() -> Inputs {
    let mut inputs = Inputs::default();
    load_str(
        std::path::Path::new("quickstart.yaml"),
        crate::render::QUICKSTART,
        &mut inputs,
    )
    .expect("the quickstart loads");
    inputs
}

/// The quickstart's MailDomain `example-com` in namespace `mail`.
pub fn quickstart_domain() -> MailDomain {
    quickstart().domains.remove(0)
}

/// The builder view of `md` in namespace `mail`.
pub fn domain(md: &MailDomain) -> super::Domain<'_> {
    super::Domain::new(md, "mail")
}
