//! `memkv license …`: run your own signing key, issue licenses, verify one.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use memkv::config::parse_size;
use memkv::license::{License, SigningKey, TrustedKeys};

#[derive(Subcommand, Debug)]
pub(crate) enum LicenseCmd {
    /// Create a signing key (secret) and print its public key on stderr
    Keygen {
        /// Write the secret key here (mode 0600) instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
    /// Print the public key of a signing key (for MEMKV_LICENSE_PUBKEY)
    Pubkey {
        /// Signing key file
        #[arg(long, value_name = "FILE")]
        signing_key: String,
    },
    /// Issue a license signed with your signing key
    Issue {
        /// Signing key file (from `memkv license keygen`)
        #[arg(long, value_name = "FILE")]
        signing_key: String,
        /// Who the license is for
        #[arg(long)]
        licensee: String,
        /// Valid for this many days from now
        #[arg(long, default_value_t = 365, conflicts_with = "expires")]
        days: u64,
        /// Valid until this RFC 3339 date/time (e.g. 2027-06-30 or 2027-06-30T00:00:00Z)
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
        /// Most nodes in a cluster (0 = unlimited)
        #[arg(long, default_value_t = 0)]
        max_nodes: u32,
        /// Largest node memory, e.g. 512GiB (0 = unlimited)
        #[arg(long, default_value = "0")]
        capacity: String,
        /// Write the license here instead of stdout
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
    },
    /// Verify a license (MEMKV_LICENSE by default) and print its claims
    Verify {
        /// License file or token [default: $MEMKV_LICENSE]
        #[arg(long = "file", value_name = "PATH|TOKEN")]
        license: Option<String>,
        /// Extra trusted public keys [default: $MEMKV_LICENSE_PUBKEY]
        #[arg(long, value_name = "KEYS")]
        pubkey: Option<String>,
    },
}

fn write_secret(path: &str, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {path} (it must not exist yet)"))?;
    f.write_all(text.as_bytes()).with_context(|| format!("writing {path}"))?;
    Ok(())
}

fn read_signing_key(path: &str) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading signing key {path}"))?;
    SigningKey::parse(&text).with_context(|| format!("signing key {path}"))
}

pub(crate) fn run(cmd: LicenseCmd) -> Result<ExitCode> {
    match cmd {
        LicenseCmd::Keygen { out } => {
            let key = SigningKey::generate()?;
            let text = format!("# MemKV license signing key: keep it secret\n{key}\n");
            match out {
                Some(path) => write_secret(&path, &text)?,
                None => print!("{text}"),
            }
            eprintln!("public key: {}", key.public_key());
            eprintln!("trust it with: export MEMKV_LICENSE_PUBKEY={}", key.public_key());
        }
        LicenseCmd::Pubkey { signing_key } => println!("{}", read_signing_key(&signing_key)?.public_key()),
        LicenseCmd::Issue { signing_key, licensee, days, expires, max_nodes, capacity, out } => {
            let key = read_signing_key(&signing_key)?;
            let now = SystemTime::now();
            let until = match expires {
                Some(d) => humantime::parse_rfc3339_weak(&d)
                    .or_else(|_| humantime::parse_rfc3339_weak(&format!("{d} 00:00:00")))
                    .with_context(|| {
                        format!("--expires {d:?}: expected a date like 2027-06-30 or 2027-06-30T12:00:00Z")
                    })?,
                None => now + Duration::from_secs(days.saturating_mul(86_400)),
            };
            if until <= now {
                bail!("the expiry date is in the past; pick a later --expires or a positive --days");
            }
            let capacity = parse_size(&capacity).map_err(|e| anyhow::anyhow!("--capacity {capacity:?}: {e}"))?;
            let token = key.issue(&licensee, now, until, max_nodes, capacity)?;
            match out {
                Some(path) => std::fs::write(&path, format!("{token}\n")).with_context(|| format!("writing {path}"))?,
                None => println!("{token}"),
            }
        }
        LicenseCmd::Verify { license, pubkey } => {
            let license = license.or_else(|| std::env::var(memkv::license::LICENSE_ENV).ok());
            let pubkey = pubkey.or_else(|| std::env::var(memkv::license::PUBKEY_ENV).ok());
            let trusted = TrustedKeys::with_extra(pubkey.as_deref())?;
            match License::load(license.as_deref(), &trusted, SystemTime::now()) {
                Ok(l) => println!("valid: {}", l.summary()),
                Err(e) => {
                    eprintln!("invalid: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
