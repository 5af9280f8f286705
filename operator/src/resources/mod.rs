//! Pure builders of the Kubernetes objects of one MailDomain.

pub mod backup;
