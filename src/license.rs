//! Signed licenses (Ed25519).
//!
//! Both the MemKV server and the client library verify a license at start-up
//! and refuse to start, with one clear line naming the problem and the fix,
//! when it is missing, malformed, tampered with, signed by an untrusted key,
//! expired or not yet valid.
//!
//! # Where the license and the trusted keys come from
//!
//! * [`LICENSE_ENV`] (`MEMKV_LICENSE`) holds either the inline token (any value
//!   that starts with [`TOKEN_PREFIX`]) or the path of a license file.
//! * The trusted public keys are [`BUILTIN_PUBKEYS`] (MemKV's release keys) plus
//!   the entries of [`PUBKEY_ENV`] (`MEMKV_LICENSE_PUBKEY`): a comma-separated
//!   list whose entries are each an inline public key string or the path of a
//!   file holding one. Empty entries are skipped.
//!
//! [`License::from_env`] does both; [`TrustedKeys::with_extra`] and
//! [`License::load`] are the same steps with explicit inputs.
//!
//! # Formats
//!
//! **License token** — one line of three `.`-separated parts:
//!
//! ```text
//! memkv-license-v1.<base64url(claims JSON)>.<base64url(64-byte signature)>
//! ```
//!
//! base64url is the URL-safe alphabet without padding (RFC 4648 §5). The
//! signature is Ed25519 over the exact ASCII bytes of
//! `memkv-license-v1.<base64url(claims JSON)>` — everything before the last
//! `.` — so the claims JSON never needs canonicalising: the verifier checks the
//! bytes it was given. Verification uses `verify_strict` (rejects
//! non-canonical and small-order signatures and keys).
//!
//! **Claims JSON** — an object with these fields, all required (unknown fields
//! are ignored so that later versions can add some):
//!
//! ```json
//! {"licensee": "acme", "issued": 1767225600, "expires": 1798761600,
//!  "max_nodes": 8, "capacity_bytes": 1099511627776, "key_id": "3f1c0a9e5b7d2c4e"}
//! ```
//!
//! * `licensee`: who the license is for (string).
//! * `issued`, `expires`: Unix seconds (u64). The license is valid from
//!   `issued` (with [`CLOCK_SKEW_SECS`] of tolerance for clocks running
//!   behind) up to, not including, `expires`.
//! * `max_nodes`: u32, the most nodes a cluster may have; `0` = unlimited.
//! * `capacity_bytes`: u64, the most bytes one node may hold; `0` = unlimited.
//! * `key_id`: the key id (below) of the key that signed the token; it selects
//!   which trusted key verifies the signature.
//!
//! **License file** — holds the token; surrounding whitespace, blank lines and
//! lines whose first non-blank character is `#` are ignored. Exactly one other
//! line (the token) must remain.
//!
//! **Public key** — `ed25519:<64 hex chars>` (the 32-byte Ed25519 public key).
//! Its key id is the first 16 hex chars of SHA-256 over those 32 bytes.
//!
//! **Signing (secret) key** — `ed25519-secret:<64 hex chars>` (the 32-byte
//! Ed25519 seed). Key files may hold `#` comment lines too. The secret is never
//! printed by `Debug` nor put into an error message.
//!
//! # Verification order
//!
//! 1. token structure, base64 and signature length → [`LicenseError::Malformed`];
//! 2. claims JSON (all fields present, right types) → [`LicenseError::Malformed`];
//! 3. `key_id` names a trusted key → else [`LicenseError::UntrustedKey`];
//! 4. the signature verifies under that key → else [`LicenseError::BadSignature`];
//! 5. `key_id` of the claims matches, `issued < expires`, then the dates against
//!    `now` → [`LicenseError::NotYetValid`] / [`LicenseError::Expired`].

use std::fmt;
use std::io::{self, Read};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// First part of every license token (format name and version).
pub const TOKEN_PREFIX: &str = "memkv-license-v1";

/// Environment variable holding the license: a file path or the inline token.
pub const LICENSE_ENV: &str = "MEMKV_LICENSE";

/// Environment variable holding extra trusted public keys: comma-separated,
/// each entry an inline `ed25519:<hex>` key or the path of a file holding one.
pub const PUBKEY_ENV: &str = "MEMKV_LICENSE_PUBKEY";

/// MemKV's release public keys (private halves are not in this repository).
pub const BUILTIN_PUBKEYS: &[&str] = &["ed25519:a7f3941822af56ee5983ebe45f344da63bdc09b8e22dc96a569f3ba49f7d7923"];

/// How far (seconds) `now` may lie before a license's `issued` time and the
/// license still be accepted, to tolerate clocks that run slightly behind.
pub const CLOCK_SKEW_SECS: u64 = 300;

/// Prefix of a public key string.
const PUBKEY_PREFIX: &str = "ed25519:";
/// Prefix of a signing (secret) key string.
const SECRET_PREFIX: &str = "ed25519-secret:";
/// Largest license or key file read (bytes); a token is a few hundred bytes.
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Longest user-supplied value echoed back in an error message (chars).
const MAX_ECHO_CHARS: usize = 80;
/// First second that `humantime` cannot format (year 10000).
const FIRST_UNFORMATTABLE_SECS: u64 = 253_402_300_800;

/// The signed contents of a license. See the module docs for the JSON form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who the license is issued to.
    pub licensee: String,
    /// When the license was issued (Unix seconds); it is not valid before.
    pub issued: u64,
    /// When the license expires (Unix seconds); it is not valid from then on.
    pub expires: u64,
    /// Most nodes a cluster may have; 0 = unlimited.
    pub max_nodes: u32,
    /// Most bytes one node may hold; 0 = unlimited.
    pub capacity_bytes: u64,
    /// Key id of the signing key (first 16 hex chars of SHA-256 of its public key).
    pub key_id: String,
}

/// Why a license, key or limit check was refused. Every message is one line
/// that names what failed, the value, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LicenseError {
    /// `MEMKV_LICENSE` is not set (or empty).
    #[error(
        "MEMKV_LICENSE is not set: no license found. Set MEMKV_LICENSE to a license file path or token (a dev license: memkv license keygen > dev.key && memkv license issue --signing-key dev.key --licensee dev --days 30, and add the dev key's public key to MEMKV_LICENSE_PUBKEY)."
    )]
    Missing,

    /// The license file could not be read.
    #[error(
        "license file {path}: {}; set MEMKV_LICENSE to an existing file or the inline token.",
        io_reason(.error)
    )]
    Unreadable {
        /// The path from `MEMKV_LICENSE`.
        path: String,
        /// The underlying I/O error (in the message already, so not a `source`: error chains
        /// would print it twice).
        error: io::Error,
    },

    /// The token or its claims are not in the expected format.
    #[error(
        "malformed license: {why}; set MEMKV_LICENSE to the complete token (memkv-license-v1.<claims>.<signature>) or a file holding it, exactly as issued."
    )]
    Malformed {
        /// What is wrong, and where.
        why: String,
    },

    /// The claims name a key id that is not among the trusted keys.
    #[error(
        "license for {licensee:?} is signed by key id {key_id}, which is not trusted (or the license was tampered with); add that key's public key (ed25519:<hex>) to MEMKV_LICENSE_PUBKEY, or use a license signed by a MemKV release key."
    )]
    UntrustedKey {
        /// The key id named in the claims.
        key_id: String,
        /// The licensee named in the claims.
        licensee: String,
    },

    /// The signature does not verify under the trusted key the claims name.
    #[error(
        "license signature does not verify (licensee {licensee:?}, key id {key_id}): the license was tampered with, or signed by a key that is not trusted; get an unmodified copy of the license, or add its signing key's public key to MEMKV_LICENSE_PUBKEY."
    )]
    BadSignature {
        /// The key id named in the claims.
        key_id: String,
        /// The licensee named in the claims.
        licensee: String,
    },

    /// The license's expiry time has passed.
    #[error(
        "license expired on {at} (licensee {licensee:?}); ask your MemKV contact for a renewed license and point MEMKV_LICENSE at it."
    )]
    Expired {
        /// Expiry time, RFC 3339.
        at: String,
        /// The licensee named in the claims.
        licensee: String,
    },

    /// The license's issue time lies in the future.
    #[error(
        "license is not valid until {from} (licensee {licensee:?}) but this machine's clock says {now}; fix the system clock, or ask your MemKV contact for a license valid from today."
    )]
    NotYetValid {
        /// Start of validity, RFC 3339.
        from: String,
        /// The `now` it was checked against, RFC 3339.
        now: String,
        /// The licensee named in the claims.
        licensee: String,
    },

    /// A public key string (or `MEMKV_LICENSE_PUBKEY` entry) is not usable.
    #[error(
        "public key {value} is not usable: {why}; expected ed25519:<64 hex chars> (in MEMKV_LICENSE_PUBKEY: comma-separated keys or paths of files holding one)."
    )]
    BadPublicKey {
        /// The offending value, quoted and shortened (never secret material).
        value: String,
        /// What is wrong with it.
        why: String,
    },

    /// A signing key string is not usable. The value itself is never shown.
    #[error(
        "signing key is not usable: {why}; expected one line ed25519-secret:<64 hex chars> as written by memkv license keygen (the key is not shown here)."
    )]
    BadSigningKey {
        /// What is wrong with it (contains no key material).
        why: String,
    },

    /// The claims asked of [`SigningKey::issue`] are not valid.
    #[error("cannot issue license: {why}; fix the licensee or dates and issue again.")]
    InvalidClaims {
        /// What is wrong with the request.
        why: String,
    },

    /// The operating system's random number generator failed.
    #[error(
        "cannot generate a signing key: the OS random number generator failed ({why}); retry, or generate the key on another machine."
    )]
    RandomUnavailable {
        /// The error reported by `getrandom`.
        why: String,
    },

    /// The cluster has more nodes than the license allows.
    #[error(
        "cluster has {nodes} nodes but the license (licensee {licensee:?}) allows at most {max}; remove nodes, or ask your MemKV contact for a license with a higher max_nodes."
    )]
    TooManyNodes {
        /// Nodes requested.
        nodes: u64,
        /// The license's `max_nodes`.
        max: u32,
        /// The licensee named in the claims.
        licensee: String,
    },

    /// A node's capacity is larger than the license allows.
    #[error(
        "node capacity {bytes} bytes exceeds the licensed {max} bytes (licensee {licensee:?}); lower the node's memory (--memory / MEMKV_MEMORY), or ask your MemKV contact for a license with a larger capacity_bytes."
    )]
    OverCapacity {
        /// Capacity requested (bytes).
        bytes: u64,
        /// The license's `capacity_bytes`.
        max: u64,
        /// The licensee named in the claims.
        licensee: String,
    },
}

/// An Ed25519 public key that may verify licenses. Parsed from and displayed
/// as `ed25519:<64 hex chars>`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses `ed25519:<64 hex chars>`. Surrounding whitespace, blank lines and
    /// `#` comment lines are ignored, so the contents of a key file parse too.
    pub fn parse(s: &str) -> Result<Self, LicenseError> {
        let bad = |why: &str| LicenseError::BadPublicKey { value: echo(s), why: why.to_owned() };
        if s.contains(SECRET_PREFIX) {
            // Never echo secret material back.
            return Err(LicenseError::BadPublicKey {
                value: "(not shown)".to_owned(),
                why: "this is a secret signing key, not a public key; give the matching public key instead and keep the signing key private".to_owned(),
            });
        }
        let line = single_line(s).map_err(|why| bad(&why))?;
        let hex_part = line.strip_prefix(PUBKEY_PREFIX).ok_or_else(|| bad("it does not start with \"ed25519:\""))?;
        let bytes = decode_hex32(hex_part).map_err(|why| bad(&why))?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|_| bad("the 32 bytes are not a valid Ed25519 curve point"))?;
        if key.is_weak() {
            return Err(bad("it is a weak (small-order) Ed25519 key"));
        }
        Ok(PublicKey(key))
    }

    /// The key id: the first 16 hex chars of SHA-256 over the 32 key bytes.
    pub fn key_id(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let mut id = hex::encode(digest);
        id.truncate(16);
        id
    }
}

impl FromStr for PublicKey {
    type Err = LicenseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PublicKey::parse(s)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBKEY_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An Ed25519 signing (secret) key that issues licenses. Parsed from and
/// displayed as `ed25519-secret:<64 hex chars>` (the 32-byte seed); `Debug`
/// shows only the public half. The key is zeroed when dropped.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl SigningKey {
    /// Generates a new key from the operating system's random number generator.
    pub fn generate() -> Result<Self, LicenseError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| LicenseError::RandomUnavailable { why: e.to_string() })?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        wipe(&mut seed);
        Ok(SigningKey(key))
    }

    /// Parses `ed25519-secret:<64 hex chars>`. Surrounding whitespace, blank
    /// lines and `#` comment lines are ignored, so the contents of a key file
    /// parse too. Errors never contain the key material.
    pub fn parse(s: &str) -> Result<Self, LicenseError> {
        let bad = |why: &str| LicenseError::BadSigningKey { why: why.to_owned() };
        let line = single_line(s).map_err(|_| bad("expected exactly one non-comment line holding the key"))?;
        let Some(hex_part) = line.strip_prefix(SECRET_PREFIX) else {
            if line.starts_with(PUBKEY_PREFIX) {
                return Err(bad("this is a public key (ed25519:...), not a signing key (ed25519-secret:...)"));
            }
            return Err(bad("it does not start with \"ed25519-secret:\""));
        };
        let mut seed = decode_hex32(hex_part).map_err(|why| bad(&why))?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        wipe(&mut seed);
        Ok(SigningKey(key))
    }

    /// The public half, to be trusted by verifiers.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Issues a license token for `licensee`, valid from `issued` until
    /// `expires`, with the given limits (0 = unlimited). Times are truncated
    /// to whole seconds.
    pub fn issue(
        &self,
        licensee: &str,
        issued: SystemTime,
        expires: SystemTime,
        max_nodes: u32,
        capacity_bytes: u64,
    ) -> Result<String, LicenseError> {
        let invalid = |why: String| LicenseError::InvalidClaims { why };
        if licensee.trim().is_empty() {
            return Err(invalid("the licensee is empty".to_owned()));
        }
        if licensee.chars().any(char::is_control) {
            return Err(invalid(format!("the licensee {} contains control characters", echo(licensee))));
        }
        let issued = issued
            .duration_since(UNIX_EPOCH)
            .map_err(|_| invalid("the issue time is before 1970".to_owned()))?
            .as_secs();
        let expires = expires
            .duration_since(UNIX_EPOCH)
            .map_err(|_| invalid("the expiry time is before 1970".to_owned()))?
            .as_secs();
        if expires <= issued {
            return Err(invalid(format!(
                "the expiry {} is not after the issue time {}",
                fmt_unix(expires),
                fmt_unix(issued)
            )));
        }
        let claims = Claims {
            licensee: licensee.to_owned(),
            issued,
            expires,
            max_nodes,
            capacity_bytes,
            key_id: self.public_key().key_id(),
        };
        let json = serde_json::to_vec(&claims).map_err(|e| invalid(format!("the claims do not serialise: {e}")))?;
        Ok(self.sign_payload(&json))
    }

    /// Signs arbitrary claims bytes into a token (no validation).
    fn sign_payload(&self, claims_json: &[u8]) -> String {
        let signing_input = format!("{TOKEN_PREFIX}.{}", URL_SAFE_NO_PAD.encode(claims_json));
        let signature = self.0.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }
}

impl FromStr for SigningKey {
    type Err = LicenseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SigningKey::parse(s)
    }
}

impl fmt::Display for SigningKey {
    /// Writes the secret form `ed25519-secret:<hex>`; only for saving the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SECRET_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("public", &self.public_key()).field("secret", &"<redacted>").finish()
    }
}

/// The public keys whose signatures are accepted on licenses.
#[derive(Debug, Clone)]
pub struct TrustedKeys(Vec<PublicKey>);

impl TrustedKeys {
    /// The built-in release keys ([`BUILTIN_PUBKEYS`]).
    pub fn builtin() -> Self {
        let mut keys = TrustedKeys(Vec::new());
        for s in BUILTIN_PUBKEYS {
            // The built-in list is checked by a test; skip rather than panic.
            if let Ok(key) = PublicKey::parse(s) {
                keys.add(key);
            }
        }
        keys
    }

    /// builtin + the entries of a MEMKV_LICENSE_PUBKEY-style value (comma
    /// separated, each inline key or file path). Empty entries are skipped.
    pub fn with_extra(extra: Option<&str>) -> Result<Self, LicenseError> {
        let mut keys = Self::builtin();
        for entry in extra.unwrap_or("").split(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            keys.add(parse_key_entry(entry)?);
        }
        Ok(keys)
    }

    /// The trusted keys, built-in ones first.
    pub fn keys(&self) -> &[PublicKey] {
        &self.0
    }

    /// Adds a key unless it is already trusted.
    fn add(&mut self, key: PublicKey) {
        if !self.0.contains(&key) {
            self.0.push(key);
        }
    }

    /// The trusted key with this key id.
    fn find(&self, key_id: &str) -> Option<&PublicKey> {
        self.0.iter().find(|k| k.key_id() == key_id)
    }
}

/// A license whose signature and dates were checked.
#[derive(Debug, Clone)]
pub struct License {
    /// The verified claims.
    pub claims: Claims,
}

impl License {
    /// Loads and verifies the license named by the environment: trusted keys
    /// from [`PUBKEY_ENV`] (plus the built-in ones), the license from
    /// [`LICENSE_ENV`], checked against the current time.
    pub fn from_env() -> Result<License, LicenseError> {
        Self::from_env_values(std::env::var_os(LICENSE_ENV), std::env::var_os(PUBKEY_ENV), SystemTime::now())
    }

    /// [`License::from_env`] with the variables' values passed in.
    fn from_env_values(
        license: Option<std::ffi::OsString>,
        pubkeys: Option<std::ffi::OsString>,
        now: SystemTime,
    ) -> Result<License, LicenseError> {
        let pubkeys = match &pubkeys {
            None => None,
            Some(v) => Some(v.to_str().ok_or_else(|| LicenseError::BadPublicKey {
                value: "(MEMKV_LICENSE_PUBKEY)".to_owned(),
                why: "the variable is not valid UTF-8".to_owned(),
            })?),
        };
        let trusted = TrustedKeys::with_extra(pubkeys)?;
        let license = match &license {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok_or_else(|| LicenseError::Malformed { why: "MEMKV_LICENSE is not valid UTF-8".to_owned() })?,
            ),
        };
        Self::load(license, &trusted, now)
    }

    /// `source`: the MEMKV_LICENSE value (None = not set). Inline if it starts with TOKEN_PREFIX, else a file path.
    ///
    /// An empty or all-blank value counts as not set.
    pub fn load(source: Option<&str>, trusted: &TrustedKeys, now: SystemTime) -> Result<License, LicenseError> {
        let source = source.map(str::trim).unwrap_or("");
        if source.is_empty() {
            return Err(LicenseError::Missing);
        }
        if source.starts_with(TOKEN_PREFIX) {
            return Self::verify_token(source, trusted, now);
        }
        let text =
            read_small_file(source).map_err(|error| LicenseError::Unreadable { path: source.to_owned(), error })?;
        let in_file = |why: String| LicenseError::Malformed { why: format!("license file {source}: {why}") };
        let text = String::from_utf8(text).map_err(|_| in_file("not UTF-8 text".to_owned()))?;
        let token = single_line(&text).map_err(in_file)?;
        Self::verify_token(token, trusted, now).map_err(|e| match e {
            LicenseError::Malformed { why } => in_file(why),
            other => other,
        })
    }

    /// Verifies a token: format, claims, trusted key, signature
    /// (`verify_strict`) and dates against `now`.
    pub fn verify_token(token: &str, trusted: &TrustedKeys, now: SystemTime) -> Result<License, LicenseError> {
        let (signing_input, claims_json, signature) = split_token(token.trim())?;
        let claims: Claims = serde_json::from_slice(&claims_json)
            .map_err(|e| LicenseError::Malformed { why: format!("the claims are not valid license JSON ({e})") })?;
        let key = trusted.find(&claims.key_id).ok_or_else(|| LicenseError::UntrustedKey {
            key_id: echo_plain(&claims.key_id),
            licensee: claims.licensee.clone(),
        })?;
        key.0.verify_strict(signing_input.as_bytes(), &signature).map_err(|_| LicenseError::BadSignature {
            key_id: echo_plain(&claims.key_id),
            licensee: claims.licensee.clone(),
        })?;
        // Signed by a trusted key from here on.
        if claims.expires <= claims.issued {
            return Err(LicenseError::Malformed {
                why: format!(
                    "expires ({}) is not after issued ({})",
                    fmt_unix(claims.expires),
                    fmt_unix(claims.issued)
                ),
            });
        }
        let now_secs = unix_secs(now);
        if now_secs.saturating_add(CLOCK_SKEW_SECS) < claims.issued {
            return Err(LicenseError::NotYetValid {
                from: fmt_unix(claims.issued),
                now: fmt_unix(now_secs),
                licensee: claims.licensee,
            });
        }
        if now_secs >= claims.expires {
            return Err(LicenseError::Expired { at: fmt_unix(claims.expires), licensee: claims.licensee });
        }
        Ok(License { claims })
    }

    /// one-line summary safe to log / show in /v1/status: licensee, expiry date (RFC 3339), max nodes, capacity, key id
    pub fn summary(&self) -> String {
        let c = &self.claims;
        let nodes = match c.max_nodes {
            0 => "unlimited".to_owned(),
            n => n.to_string(),
        };
        let capacity = match c.capacity_bytes {
            0 => "unlimited".to_owned(),
            b => format!("{b} bytes ({})", fmt_bytes(b)),
        };
        format!(
            "licensee {:?}, expires {}, max nodes {nodes}, capacity {capacity}, key id {}",
            c.licensee,
            fmt_unix(c.expires),
            echo_plain(&c.key_id)
        )
    }

    /// check a cluster size / node capacity against the claims (0 = unlimited): errors name the numbers and the fix
    pub fn check_nodes(&self, nodes: usize) -> Result<(), LicenseError> {
        let max = self.claims.max_nodes;
        let nodes = u64::try_from(nodes).unwrap_or(u64::MAX);
        if max != 0 && nodes > u64::from(max) {
            return Err(LicenseError::TooManyNodes { nodes, max, licensee: self.claims.licensee.clone() });
        }
        Ok(())
    }

    /// Checks one node's capacity in bytes against `capacity_bytes` (0 = unlimited).
    pub fn check_capacity(&self, bytes: u64) -> Result<(), LicenseError> {
        let max = self.claims.capacity_bytes;
        if max != 0 && bytes > max {
            return Err(LicenseError::OverCapacity { bytes, max, licensee: self.claims.licensee.clone() });
        }
        Ok(())
    }
}

/// Splits a token into its signing input, decoded claims and signature,
/// checking only its structure.
fn split_token(token: &str) -> Result<(&str, Vec<u8>, Signature), LicenseError> {
    let malformed = |why: String| LicenseError::Malformed { why };
    let parts: Vec<&str> = token.split('.').collect();
    let [prefix, payload, sig] = parts.as_slice() else {
        return Err(malformed(format!("a token has 3 '.'-separated parts, this one has {}", parts.len())));
    };
    if *prefix != TOKEN_PREFIX {
        let why = if prefix.starts_with("memkv-license-") {
            format!(
                "unsupported license format {}; this MemKV understands {TOKEN_PREFIX} (upgrade MemKV or ask for a {TOKEN_PREFIX} license)",
                echo(prefix)
            )
        } else {
            format!("it does not start with \"{TOKEN_PREFIX}.\" (starts with {})", echo(prefix))
        };
        return Err(malformed(why));
    }
    let claims_json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| malformed(format!("the claims part is not valid base64url ({e})")))?;
    let sig_bytes = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|e| malformed(format!("the signature part is not valid base64url ({e})")))?;
    let sig_bytes: [u8; 64] = sig_bytes
        .as_slice()
        .try_into()
        .map_err(|_| malformed(format!("the signature is {} bytes, an Ed25519 signature is 64", sig_bytes.len())))?;
    // Structure checked: the signing input is everything before the last '.'.
    let signing_input = &token[..prefix.len() + 1 + payload.len()];
    Ok((signing_input, claims_json, Signature::from_bytes(&sig_bytes)))
}

/// Parses one `MEMKV_LICENSE_PUBKEY` entry: an inline key or a key file path.
fn parse_key_entry(entry: &str) -> Result<PublicKey, LicenseError> {
    if entry.starts_with(PUBKEY_PREFIX) || entry.starts_with(SECRET_PREFIX) {
        return PublicKey::parse(entry);
    }
    let bytes = read_small_file(entry).map_err(|e| LicenseError::BadPublicKey {
        value: echo(entry),
        why: format!("it is neither an inline key nor a readable key file ({})", io_reason(&e)),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| LicenseError::BadPublicKey {
        value: echo(entry),
        why: "the key file is not UTF-8 text".to_owned(),
    })?;
    PublicKey::parse(&text).map_err(|e| match e {
        LicenseError::BadPublicKey { value, why } => {
            LicenseError::BadPublicKey { value: echo(entry), why: format!("key file holds {value}: {why}") }
        }
        other => other,
    })
}

/// The lines of `text` that are neither blank nor `#` comments, trimmed.
fn significant_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The single significant line of `text`; otherwise why not.
fn single_line(text: &str) -> Result<&str, String> {
    let mut lines = significant_lines(text);
    let first = lines.next().ok_or_else(|| "it holds nothing but blank or # comment lines".to_owned())?;
    let extra = lines.count();
    if extra > 0 {
        return Err(format!("expected exactly one non-comment line, found {}", extra + 1));
    }
    Ok(first)
}

/// Decodes exactly 64 hex chars into 32 bytes. Errors never echo the input.
fn decode_hex32(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64 {
        return Err(format!("expected 64 hex chars after the prefix, found {}", s.chars().count()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| "the key contains characters that are not hex digits".to_owned())?;
    Ok(out)
}

/// Reads a file of at most [`MAX_FILE_BYTES`].
fn read_small_file(path: &str) -> io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("file is larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(buf)
}

/// An I/O error's text without the trailing ` (os error N)`.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_owned(),
        _ => text,
    }
}

/// A user-supplied value, quoted and escaped (one line), shortened if long.
fn echo(s: &str) -> String {
    if s.chars().count() <= MAX_ECHO_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX_ECHO_CHARS).collect();
        format!("{head:?}...")
    }
}

/// Like [`echo`] but without quotes when the value is plain ASCII
/// alphanumerics (key ids), so messages stay readable.
fn echo_plain(s: &str) -> String {
    if !s.is_empty() && s.len() <= MAX_ECHO_CHARS && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        s.to_owned()
    } else {
        echo(s)
    }
}

/// Unix seconds of `t`, 0 if before 1970.
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Unix seconds as RFC 3339 (`2026-01-01T00:00:00Z`), never panicking.
fn fmt_unix(secs: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
        Some(t) if secs < FIRST_UNFORMATTABLE_SECS => humantime::format_rfc3339_seconds(t).to_string(),
        _ => format!("unix time {secs} (after year 9999)"),
    }
}

/// Bytes in binary units, one decimal (`1.5 GiB`).
fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = b as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{b} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// Best-effort overwrite of a secret buffer (the dalek key zeroes itself).
fn wipe(buf: &mut [u8; 32]) {
    *buf = [0u8; 32];
    std::hint::black_box(buf);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const GIB: u64 = 1 << 30;

    /// A deterministic signing key (seed = 32 × `n`).
    fn key(n: u8) -> SigningKey {
        let text = format!("{SECRET_PREFIX}{}", hex::encode([n; 32]));
        match SigningKey::parse(&text) {
            Ok(k) => k,
            Err(e) => panic!("test key {n} does not parse: {e}"),
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        match humantime::parse_rfc3339_weak(rfc3339) {
            Ok(t) => t,
            Err(e) => panic!("bad test time {rfc3339}: {e}"),
        }
    }

    fn now() -> SystemTime {
        at("2026-06-01T00:00:00Z")
    }

    fn trusting(k: &SigningKey) -> TrustedKeys {
        TrustedKeys::with_extra(Some(&k.public_key().to_string())).expect("trusted keys")
    }

    /// acme, 2026-01-01 .. 2027-01-01, 4 nodes, 1 GiB.
    fn acme_token(k: &SigningKey) -> String {
        k.issue("acme", at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"), 4, GIB).expect("issue")
    }

    fn acme_license(max_nodes: u32, capacity_bytes: u64) -> License {
        let k = key(1);
        let token = k
            .issue("acme", at("2026-01-01T00:00:00Z"), at("2027-01-01T00:00:00Z"), max_nodes, capacity_bytes)
            .expect("issue");
        License::verify_token(&token, &trusting(&k), now()).expect("verify")
    }

    fn claims_json_of(token: &str) -> serde_json::Value {
        let payload = token.split('.').nth(1).expect("payload part");
        let bytes = URL_SAFE_NO_PAD.decode(payload).expect("base64");
        serde_json::from_slice(&bytes).expect("json")
    }

    fn malformed_why(r: Result<License, LicenseError>) -> String {
        match r {
            Err(LicenseError::Malformed { why }) => why,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn issued_token_verifies_and_round_trips_the_claims() {
        let k = key(1);
        let token = acme_token(&k);
        let license = License::verify_token(&token, &trusting(&k), now()).expect("verify");
        assert_eq!(
            license.claims,
            Claims {
                licensee: "acme".to_owned(),
                issued: unix_secs(at("2026-01-01T00:00:00Z")),
                expires: unix_secs(at("2027-01-01T00:00:00Z")),
                max_nodes: 4,
                capacity_bytes: GIB,
                key_id: k.public_key().key_id(),
            }
        );
    }

    #[test]
    fn token_format_is_prefix_payload_signature_over_the_first_two_parts() {
        let k = key(1);
        let token = acme_token(&k);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], TOKEN_PREFIX);
        let json = claims_json_of(&token);
        assert_eq!(json["licensee"], "acme");
        assert_eq!(json["max_nodes"], 4);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("sig base64");
        let sig: [u8; 64] = sig.as_slice().try_into().expect("64 bytes");
        let signed = format!("{}.{}", parts[0], parts[1]);
        k.public_key()
            .0
            .verify_strict(signed.as_bytes(), &Signature::from_bytes(&sig))
            .expect("signature covers prefix.payload");
    }

    #[test]
    fn load_accepts_an_inline_token_with_surrounding_whitespace() {
        let k = key(1);
        let token = format!("  {}\n", acme_token(&k));
        let license = License::load(Some(&token), &trusting(&k), now()).expect("load");
        assert_eq!(license.claims.licensee, "acme");
    }

    #[test]
    fn load_reads_a_file_ignoring_comments_and_blank_lines() {
        let k = key(1);
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        write!(file, "# MemKV license for acme\n\n   # issued by sales\n  {}  \n\n# end\n", acme_token(&k))
            .expect("write");
        let path = file.path().to_str().expect("utf-8 path");
        let license = License::load(Some(path), &trusting(&k), now()).expect("load");
        assert_eq!(license.claims.licensee, "acme");
        assert_eq!(license.claims.max_nodes, 4);
    }

    #[test]
    fn license_file_with_two_tokens_or_none_is_malformed() {
        let k = key(1);
        let token = acme_token(&k);
        let mut two = tempfile::NamedTempFile::new().expect("tempfile");
        write!(two, "{token}\n{token}\n").expect("write");
        let path = two.path().to_str().expect("utf-8 path");
        let why = malformed_why(License::load(Some(path), &trusting(&k), now()));
        assert!(why.contains(path), "{why}");
        assert!(why.contains("found 2"), "{why}");

        let mut empty = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(empty, "# only a comment").expect("write");
        let path = empty.path().to_str().expect("utf-8 path");
        let why = malformed_why(License::load(Some(path), &trusting(&k), now()));
        assert!(why.contains("comment"), "{why}");
    }

    #[test]
    fn malformed_token_inside_a_file_names_the_file() {
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(file, "memkv-license-v1.not-a-token").expect("write");
        let path = file.path().to_str().expect("utf-8 path");
        let why = malformed_why(License::load(Some(path), &TrustedKeys::builtin(), now()));
        assert!(why.starts_with(&format!("license file {path}: ")), "{why}");
    }

    #[test]
    fn unset_or_empty_license_is_missing() {
        let trusted = TrustedKeys::builtin();
        for source in [None, Some(""), Some("  \n")] {
            let err = License::load(source, &trusted, now()).expect_err("must fail");
            assert!(matches!(err, LicenseError::Missing), "{source:?}: {err:?}");
            let msg = err.to_string();
            assert!(msg.starts_with("MEMKV_LICENSE is not set"), "{msg}");
            assert!(msg.contains("memkv license keygen"), "{msg}");
        }
    }

    #[test]
    fn nonexistent_license_file_is_unreadable_and_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such.license");
        let path = path.to_str().expect("utf-8 path");
        let err = License::load(Some(path), &TrustedKeys::builtin(), now()).expect_err("fails");
        assert!(matches!(&err, LicenseError::Unreadable { path: p, .. } if p == path), "{err:?}");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "license file {path}: No such file or directory; set MEMKV_LICENSE to an existing file or the inline token."
            )
        );
    }

    #[test]
    fn garbage_and_wrong_prefix_tokens_are_malformed() {
        let trusted = TrustedKeys::builtin();
        let why = malformed_why(License::verify_token("garbage", &trusted, now()));
        assert!(why.contains("3 '.'-separated parts"), "{why}");

        let why = malformed_why(License::verify_token("hello.aGk.aGk", &trusted, now()));
        assert!(why.contains("does not start with"), "{why}");

        let k = key(1);
        let token = acme_token(&k).replacen("memkv-license-v1", "memkv-license-v2", 1);
        let why = malformed_why(License::verify_token(&token, &trusting(&k), now()));
        assert!(why.contains("unsupported license format"), "{why}");
    }

    #[test]
    fn bad_base64_or_short_signature_is_malformed() {
        let k = key(1);
        let token = acme_token(&k);
        let parts: Vec<&str> = token.split('.').collect();
        let trusted = trusting(&k);

        let bad_payload = format!("{}.{}!!.{}", parts[0], parts[1], parts[2]);
        let why = malformed_why(License::verify_token(&bad_payload, &trusted, now()));
        assert!(why.contains("claims part is not valid base64url"), "{why}");

        let bad_sig = format!("{}.{}.{}*", parts[0], parts[1], parts[2]);
        let why = malformed_why(License::verify_token(&bad_sig, &trusted, now()));
        assert!(why.contains("signature part is not valid base64url"), "{why}");

        let short_sig = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode([7u8; 63]));
        let why = malformed_why(License::verify_token(&short_sig, &trusted, now()));
        assert!(why.contains("63 bytes"), "{why}");
    }

    #[test]
    fn signed_but_invalid_claims_json_is_malformed() {
        let k = key(1);
        let trusted = trusting(&k);
        let kid = k.public_key().key_id();

        let not_json = k.sign_payload(b"{not json");
        let why = malformed_why(License::verify_token(&not_json, &trusted, now()));
        assert!(why.contains("not valid license JSON"), "{why}");

        let missing = format!(
            r#"{{"licensee":"acme","issued":1767225600,"expires":1798761600,"capacity_bytes":0,"key_id":"{kid}"}}"#
        );
        let token = k.sign_payload(missing.as_bytes());
        let why = malformed_why(License::verify_token(&token, &trusted, now()));
        assert!(why.contains("missing field `max_nodes`"), "{why}");

        let wrong_type = format!(
            r#"{{"licensee":"acme","issued":"yesterday","expires":1798761600,"max_nodes":0,"capacity_bytes":0,"key_id":"{kid}"}}"#
        );
        let token = k.sign_payload(wrong_type.as_bytes());
        let why = malformed_why(License::verify_token(&token, &trusted, now()));
        assert!(why.contains("invalid type"), "{why}");
    }

    #[test]
    fn unknown_claim_fields_are_ignored() {
        let k = key(1);
        let json = format!(
            r#"{{"licensee":"acme","issued":1767225600,"expires":1798761600,"max_nodes":2,"capacity_bytes":0,"key_id":"{}","features":["tiering"],"v":2}}"#,
            k.public_key().key_id()
        );
        let token = k.sign_payload(json.as_bytes());
        let license = License::verify_token(&token, &trusting(&k), now()).expect("verify");
        assert_eq!(license.claims.max_nodes, 2);
    }

    #[test]
    fn signed_claims_with_expiry_not_after_issue_are_malformed() {
        let k = key(1);
        let json = format!(
            r#"{{"licensee":"acme","issued":1767225600,"expires":1767225600,"max_nodes":0,"capacity_bytes":0,"key_id":"{}"}}"#,
            k.public_key().key_id()
        );
        let token = k.sign_payload(json.as_bytes());
        let why = malformed_why(License::verify_token(&token, &trusting(&k), now()));
        assert!(why.contains("is not after issued"), "{why}");
    }

    #[test]
    fn tampered_claims_with_the_old_signature_are_rejected() {
        let k = key(1);
        let token = acme_token(&k);
        let parts: Vec<&str> = token.split('.').collect();
        let json = URL_SAFE_NO_PAD.decode(parts[1]).expect("base64");
        let text = String::from_utf8(json).expect("utf-8");
        // Flip one character: "acme" -> "acmf"; then raise the node limit.
        for tampered_json in
            [text.replacen("\"acme\"", "\"acmf\"", 1), text.replacen("\"max_nodes\":4", "\"max_nodes\":9", 1)]
        {
            assert_ne!(tampered_json, text);
            let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(tampered_json.as_bytes()), parts[2]);
            let err = License::verify_token(&tampered, &trusting(&k), now()).expect_err("tampered");
            assert!(matches!(err, LicenseError::BadSignature { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("tampered"), "{msg}");
            assert!(msg.contains("MEMKV_LICENSE_PUBKEY"), "{msg}");
        }
    }

    #[test]
    fn flipped_signature_byte_is_bad_signature() {
        let k = key(1);
        let token = acme_token(&k);
        let (head, sig) = token.rsplit_once('.').expect("three parts");
        let mut sig = URL_SAFE_NO_PAD.decode(sig).expect("base64");
        sig[10] ^= 0x01;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&sig));
        let err = License::verify_token(&tampered, &trusting(&k), now()).expect_err("tampered");
        assert!(matches!(err, LicenseError::BadSignature { .. }), "{err:?}");
    }

    #[test]
    fn key_id_pointing_at_another_trusted_key_is_bad_signature() {
        let signer = key(1);
        let other = key(2);
        let json = format!(
            r#"{{"licensee":"acme","issued":1767225600,"expires":1798761600,"max_nodes":0,"capacity_bytes":0,"key_id":"{}"}}"#,
            other.public_key().key_id()
        );
        let token = signer.sign_payload(json.as_bytes());
        let trusted =
            TrustedKeys::with_extra(Some(&format!("{},{}", signer.public_key(), other.public_key()))).expect("keys");
        let err = License::verify_token(&token, &trusted, now()).expect_err("wrong key");
        assert!(matches!(err, LicenseError::BadSignature { .. }), "{err:?}");
    }

    #[test]
    fn license_signed_by_an_untrusted_key_is_rejected() {
        let k = key(3);
        let token = acme_token(&k);
        let err = License::verify_token(&token, &TrustedKeys::builtin(), now()).expect_err("untrusted");
        match &err {
            LicenseError::UntrustedKey { key_id, licensee } => {
                assert_eq!(key_id, &k.public_key().key_id());
                assert_eq!(licensee, "acme");
            }
            other => panic!("expected UntrustedKey, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("MEMKV_LICENSE_PUBKEY"), "{msg}");
        assert!(msg.contains(&k.public_key().key_id()), "{msg}");
    }

    #[test]
    fn with_extra_inline_key_trusts_its_licenses() {
        let k = key(3);
        let token = acme_token(&k);
        let extra = format!(" , {} ,,", k.public_key());
        let trusted = TrustedKeys::with_extra(Some(&extra)).expect("keys");
        assert_eq!(trusted.keys().len(), BUILTIN_PUBKEYS.len() + 1);
        let license = License::load(Some(&token), &trusted, now()).expect("load");
        assert_eq!(license.claims.licensee, "acme");
    }

    #[test]
    fn with_extra_key_file_trusts_its_licenses_and_dedups() {
        let a = key(4);
        let b = key(5);
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        write!(file, "# dev key\n{}\n", a.public_key()).expect("write");
        let path = file.path().to_str().expect("utf-8 path");
        let extra = format!("{path},{},{}", b.public_key(), a.public_key());
        let trusted = TrustedKeys::with_extra(Some(&extra)).expect("keys");
        assert_eq!(trusted.keys().len(), BUILTIN_PUBKEYS.len() + 2);
        for k in [&a, &b] {
            License::verify_token(&acme_token(k), &trusted, now()).expect("trusted");
        }
    }

    #[test]
    fn with_extra_none_or_empty_is_just_the_builtin_keys() {
        let builtin = TrustedKeys::builtin();
        for extra in [None, Some(""), Some(" , ")] {
            let keys = TrustedKeys::with_extra(extra).expect("keys");
            assert_eq!(keys.keys(), builtin.keys(), "{extra:?}");
        }
    }

    #[test]
    fn with_extra_bad_key_strings_are_bad_public_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pub");
        let missing = missing.to_str().expect("utf-8 path").to_owned();
        let cases = [
            ("ed25519:zz".to_owned(), "64 hex chars"),
            (format!("ed25519:{}", "g".repeat(64)), "not hex"),
            (format!("rsa:{}", "00".repeat(32)), "neither an inline key"),
            (format!("ed25519:{}", "ab".repeat(31)), "found 62"),
            (missing.clone(), "No such file or directory"),
        ];
        for (value, expect) in cases {
            let err = TrustedKeys::with_extra(Some(&value)).expect_err("bad key");
            assert!(matches!(err, LicenseError::BadPublicKey { .. }), "{value}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(expect), "{value}: {msg}");
            assert!(msg.contains("ed25519:<64 hex chars>"), "{msg}");
        }
    }

    #[test]
    fn key_file_with_a_bad_key_names_the_file() {
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(file, "ed25519:1234").expect("write");
        let path = file.path().to_str().expect("utf-8 path");
        let msg = TrustedKeys::with_extra(Some(path)).expect_err("bad key").to_string();
        assert!(msg.contains(path), "{msg}");
        assert!(msg.contains("found 4"), "{msg}");
    }

    #[test]
    fn public_key_without_the_ed25519_prefix_is_rejected() {
        let err = PublicKey::parse(&format!("rsa:{}", "00".repeat(32))).expect_err("prefix");
        assert!(matches!(err, LicenseError::BadPublicKey { .. }), "{err:?}");
        assert!(err.to_string().contains("does not start with"), "{err}");
    }

    #[test]
    fn secret_key_given_as_public_key_is_rejected_without_echoing_it() {
        let k = key(6);
        let secret = k.to_string();
        let secret_hex = secret.trim_start_matches(SECRET_PREFIX).to_owned();
        let mut file = tempfile::NamedTempFile::new().expect("tempfile");
        writeln!(file, "{secret}").expect("write");
        let path = file.path().to_str().expect("utf-8 path").to_owned();
        for value in [secret, path] {
            let err = TrustedKeys::with_extra(Some(&value)).expect_err("secret");
            assert!(matches!(err, LicenseError::BadPublicKey { .. }), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains("secret signing key"), "{msg}");
            assert!(!msg.contains(&secret_hex), "{msg}");
            assert!(!format!("{err:?}").contains(&secret_hex));
        }
    }

    #[test]
    fn expired_license_is_rejected_with_its_date() {
        let k = key(1);
        let token = acme_token(&k);
        let trusted = trusting(&k);
        let expiry = at("2027-01-01T00:00:00Z");
        License::verify_token(&token, &trusted, expiry - Duration::from_secs(1)).expect("valid until the last second");
        for when in [expiry, at("2030-05-05T00:00:00Z")] {
            let err = License::verify_token(&token, &trusted, when).expect_err("expired");
            assert!(
                matches!(&err, LicenseError::Expired { at, licensee } if at == "2027-01-01T00:00:00Z" && licensee == "acme"),
                "{err:?}"
            );
            assert_eq!(
                err.to_string(),
                "license expired on 2027-01-01T00:00:00Z (licensee \"acme\"); ask your MemKV contact for a renewed license and point MEMKV_LICENSE at it."
            );
        }
    }

    #[test]
    fn license_before_its_issue_time_is_not_yet_valid() {
        let k = key(1);
        let token = acme_token(&k);
        let trusted = trusting(&k);
        let issued = at("2026-01-01T00:00:00Z");
        License::verify_token(&token, &trusted, issued - Duration::from_secs(CLOCK_SKEW_SECS))
            .expect("within clock skew tolerance");
        let early = at("2025-12-01T00:00:00Z");
        let err = License::verify_token(&token, &trusted, early).expect_err("too early");
        match &err {
            LicenseError::NotYetValid { from, now, .. } => {
                assert_eq!(from, "2026-01-01T00:00:00Z");
                assert_eq!(now, "2025-12-01T00:00:00Z");
            }
            other => panic!("expected NotYetValid, got {other:?}"),
        }
        assert!(err.to_string().contains("system clock"));
    }

    #[test]
    fn check_nodes_enforces_max_nodes_and_zero_means_unlimited() {
        let license = acme_license(4, 0);
        license.check_nodes(0).expect("0 nodes");
        license.check_nodes(4).expect("at the limit");
        let err = license.check_nodes(5).expect_err("over");
        assert!(matches!(err, LicenseError::TooManyNodes { nodes: 5, max: 4, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("5 nodes") && msg.contains("at most 4"), "{msg}");
        assert!(msg.contains("max_nodes"), "{msg}");

        let unlimited = acme_license(0, 0);
        unlimited.check_nodes(usize::MAX).expect("unlimited");
    }

    #[test]
    fn check_capacity_enforces_capacity_and_zero_means_unlimited() {
        let license = acme_license(0, GIB);
        license.check_capacity(GIB).expect("at the limit");
        let err = license.check_capacity(GIB + 1).expect_err("over");
        assert!(
            matches!(err, LicenseError::OverCapacity { bytes, max, .. } if bytes == GIB + 1 && max == GIB),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&(GIB + 1).to_string()), "{msg}");
        assert!(msg.contains("capacity_bytes"), "{msg}");

        let unlimited = acme_license(0, 0);
        unlimited.check_capacity(u64::MAX).expect("unlimited");
    }

    #[test]
    fn summary_is_one_line_with_licensee_expiry_limits_and_key_id() {
        let license = acme_license(4, GIB);
        let s = license.summary();
        assert_eq!(
            s,
            format!(
                "licensee \"acme\", expires 2027-01-01T00:00:00Z, max nodes 4, capacity 1073741824 bytes (1.0 GiB), key id {}",
                key(1).public_key().key_id()
            )
        );
        let unlimited = acme_license(0, 0).summary();
        assert!(unlimited.contains("max nodes unlimited"), "{unlimited}");
        assert!(unlimited.contains("capacity unlimited"), "{unlimited}");
    }

    #[test]
    fn far_future_expiry_does_not_panic_when_formatted() {
        let k = key(1);
        let json = format!(
            r#"{{"licensee":"line\nbreak","issued":0,"expires":{},"max_nodes":0,"capacity_bytes":0,"key_id":"{}"}}"#,
            u64::MAX,
            k.public_key().key_id()
        );
        let token = k.sign_payload(json.as_bytes());
        let license = License::verify_token(&token, &trusting(&k), now()).expect("valid");
        let s = license.summary();
        assert!(s.contains("after year 9999"), "{s}");
        assert!(!s.contains('\n'), "summary must stay one line: {s}");
    }

    #[test]
    fn signing_key_debug_does_not_contain_the_secret() {
        let k = key(7);
        let secret_hex = hex::encode([7u8; 32]);
        let debug = format!("{k:?}");
        assert!(!debug.contains(&secret_hex), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
        assert!(debug.contains(&k.public_key().to_string()), "{debug}");
        // Display is the (secret) save format and round-trips.
        assert_eq!(k.to_string(), format!("ed25519-secret:{secret_hex}"));
    }

    #[test]
    fn signing_key_parse_errors_do_not_echo_the_key() {
        let almost = format!("ed25519-secret:{}zz", "ab".repeat(31));
        let err = SigningKey::parse(&almost).expect_err("bad hex");
        assert!(matches!(err, LicenseError::BadSigningKey { .. }), "{err:?}");
        assert!(!err.to_string().contains(&"ab".repeat(31)));
        assert!(!format!("{err:?}").contains(&"ab".repeat(31)));

        let public = key(1).public_key().to_string();
        let msg = SigningKey::parse(&public).expect_err("public").to_string();
        assert!(msg.contains("public key"), "{msg}");
        let msg = SigningKey::parse("ed25519-secret:12").expect_err("short").to_string();
        assert!(msg.contains("found 2"), "{msg}");
    }

    #[test]
    fn signing_key_round_trips_through_its_file_form() {
        let k = SigningKey::generate().expect("generate");
        let file_text = format!("# memkv signing key, keep private\n{k}\n");
        let parsed: SigningKey = file_text.parse().expect("parse");
        assert_eq!(parsed.public_key(), k.public_key());
        assert_ne!(SigningKey::generate().expect("generate").public_key(), k.public_key());
    }

    #[test]
    fn public_key_round_trips_and_key_id_is_sha256_prefix() {
        let pk = key(1).public_key();
        let text = pk.to_string();
        assert!(text.starts_with("ed25519:") && text.len() == 8 + 64, "{text}");
        let parsed: PublicKey = text.parse().expect("parse");
        assert_eq!(parsed, pk);
        let upper = format!("ed25519:{}", text[8..].to_uppercase());
        assert_eq!(PublicKey::parse(&upper).expect("upper-case hex"), pk);
        let expected = hex::encode(Sha256::digest(pk.0.as_bytes()));
        assert_eq!(pk.key_id(), expected[..16]);
    }

    #[test]
    fn builtin_public_keys_parse() {
        assert!(!BUILTIN_PUBKEYS.is_empty());
        for s in BUILTIN_PUBKEYS {
            let pk = PublicKey::parse(s).expect("built-in key parses");
            assert_eq!(&pk.to_string(), s);
            assert_eq!(pk.key_id().len(), 16);
        }
        assert_eq!(TrustedKeys::builtin().keys().len(), BUILTIN_PUBKEYS.len());
    }

    #[test]
    fn issue_rejects_empty_licensee_and_backwards_dates() {
        let k = key(1);
        let t0 = at("2026-01-01T00:00:00Z");
        let t1 = at("2027-01-01T00:00:00Z");
        for (licensee, from, to, expect) in [
            ("  ", t0, t1, "licensee is empty"),
            ("a\nb", t0, t1, "control characters"),
            ("acme", t1, t0, "is not after"),
            ("acme", t0, t0, "is not after"),
        ] {
            let err = k.issue(licensee, from, to, 0, 0).expect_err("invalid");
            assert!(matches!(err, LicenseError::InvalidClaims { .. }), "{err:?}");
            assert!(err.to_string().contains(expect), "{err}");
        }
    }

    #[test]
    fn env_values_are_loaded_like_the_environment() {
        let k = key(8);
        let token = acme_token(&k);
        let err = License::from_env_values(None, Some(k.public_key().to_string().into()), now()).expect_err("unset");
        assert!(matches!(err, LicenseError::Missing), "{err:?}");
        let err = License::from_env_values(Some(token.clone().into()), None, now()).expect_err("untrusted");
        assert!(matches!(err, LicenseError::UntrustedKey { .. }), "{err:?}");
        let license = License::from_env_values(Some(token.into()), Some(k.public_key().to_string().into()), now())
            .expect("valid");
        assert_eq!(license.claims.licensee, "acme");
    }

    #[test]
    fn every_error_message_is_a_single_line() {
        let k = key(1);
        let errors = vec![
            LicenseError::Missing,
            License::load(Some("/nonexistent/x.license"), &TrustedKeys::builtin(), now()).expect_err("unreadable"),
            License::verify_token("x", &TrustedKeys::builtin(), now()).expect_err("malformed"),
            License::verify_token(&acme_token(&k), &TrustedKeys::builtin(), now()).expect_err("untrusted"),
            License::verify_token(&acme_token(&k), &trusting(&k), at("2031-01-01T00:00:00Z")).expect_err("expired"),
            TrustedKeys::with_extra(Some("ed25519:\n12")).expect_err("bad key"),
            SigningKey::parse("nope").expect_err("bad signing key"),
            k.issue("", now(), now(), 0, 0).expect_err("invalid"),
            acme_license(1, 1).check_nodes(2).expect_err("nodes"),
            acme_license(1, 1).check_capacity(2).expect_err("capacity"),
        ];
        for err in errors {
            let msg = err.to_string();
            assert!(!msg.contains('\n'), "multi-line message: {msg}");
            assert!(msg.ends_with('.'), "message should end a sentence: {msg}");
        }
    }
}
