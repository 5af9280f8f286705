//! Postwarden: a Kubernetes operator for private, hardened email clusters.
//!
//! Data flows one way: [`api`] types → [`controller`] (reads cluster state, applies, writes
//! status) → the pure layers ([`resources`], [`config`], [`pki`], [`dkim`], [`dns`], [`userdb`])
//! that turn specs into Kubernetes objects and daemon configuration without any I/O.

pub mod agent;
pub mod api;
pub mod backup;
pub mod config;
pub mod continuity;
pub mod controller;
pub mod crd;
pub mod dkim;
pub mod dns;
pub mod local;
pub mod manifest;
pub mod names;
pub mod pki;
pub mod plan;
pub mod render;
pub mod replicate;
pub mod resources;
pub mod runtime;
pub mod strict;
#[cfg(test)]
mod test_support;
pub mod userdb;
