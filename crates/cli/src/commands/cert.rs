//! `drivesec cert`: what a certificate says.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use drivesec_pki::inspect::summarize;
use drivesec_pki::read_cert_chain;

use crate::output::print_json;
use crate::text::safe;

/// `drivesec cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// A PEM certificate file (the first certificate is shown).
    pub file: PathBuf,
}

/// Runs `cert`.
pub fn run(a: CertArgs, json: bool) -> Result<()> {
    let chain = read_cert_chain(&a.file)?;
    let s = summarize(&chain[0])?;
    if json {
        print_json(&serde_json::to_value(&s)?)
    } else {
        println!("subject:   {}", safe(&s.subject));
        println!("issuer:    {}", safe(&s.issuer));
        println!("serial:    {}", s.serial);
        println!("validity:  {} .. {}", s.not_before, s.not_after);
        println!("CA:        {}", s.is_ca);
        println!("keyUsage:  {}", s.key_usage.join(", "));
        println!("extKeyUsage: {}", s.extended_key_usage.join(", "));
        println!("SAN:       {}", safe(&s.subject_alt_names.join(", ")));
        println!("role:      {}", safe(s.role.as_deref().unwrap_or("(none)")));
        println!("sha256:    {}", s.sha256_fingerprint);
        Ok(())
    }
}
