//! The store's keys: one that seals secrets at rest, one that signs cookies.
//!
//! Each comes from the environment (`ENCRYPTION_KEY`, `AUTH_HMAC_SECRET`: base64 of 32 bytes,
//! so replicas can share them) or is generated into the data directory on first start with
//! file mode 0600 and reused afterwards.

use std::fmt;
use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use zeroize::Zeroizing;

/// A key could not be loaded, generated or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0} must be base64 of exactly 32 bytes (generate one with: openssl rand -base64 32)")]
    BadEnvKey(&'static str),
    #[error(
        "{0} is required with a shared store: base64 of 32 bytes, the same for every proxy on the database (generate one with: openssl rand -base64 32)"
    )]
    MissingEnvKey(&'static str),
    #[error("key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("a sealed secret could not be opened (wrong ENCRYPTION_KEY, or the data was altered)")]
    Open,
    #[error("a secret could not be sealed")]
    Seal,
}

/// The stored name of the cookie key when a shared store generates it (sealed like every
/// secret).
pub const COOKIE_KEY_SECRET: &str = "cookie_hmac_key";

/// Authenticated encryption for secrets at rest (XChaCha20-Poly1305, random 192-bit nonces).
/// The associated data binds each ciphertext to where it is stored, so a sealed value moved to
/// another record does not open.
#[derive(Clone)]
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

const NONCE_LEN: usize = 24;

impl SecretBox {
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| KeyError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let (nonce, ct) = sealed.split_at_checked(NONCE_LEN).ok_or(KeyError::Open)?;
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| KeyError::Open)
    }
}

/// The keys a running proxy holds.
#[derive(Clone)]
pub struct Keys {
    pub sealer: SecretBox,
    /// Signs cookies (CSRF tokens, browser sessions).
    pub hmac: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(***)")
    }
}

impl Keys {
    /// Loads both keys: from the given base64 values when set, else from (or newly into) files
    /// in `data_dir`.
    pub fn load(
        data_dir: &Path,
        encryption_key: Option<&str>,
        hmac_secret: Option<&str>,
    ) -> Result<Self, KeyError> {
        let enc = key_from(data_dir, "encryption.key", "ENCRYPTION_KEY", encryption_key)?;
        let hmac = key_from(data_dir, "hmac.key", "AUTH_HMAC_SECRET", hmac_secret)?;
        Ok(Self {
            sealer: SecretBox::new(&enc),
            hmac,
        })
    }

    /// The keys for a store several processes share: the sealing key must be given (every
    /// process needs the same one, and the database must not hold it); the cookie key is the
    /// given one, or a random placeholder until [`Keys::with_hmac`] sets the one kept in the
    /// store (random, so that a cookie signed with it by mistake could never be forged).
    pub fn given(
        encryption_key: Option<&str>,
        hmac_secret: Option<&str>,
    ) -> Result<(Self, bool), KeyError> {
        let enc = encryption_key
            .filter(|s| !s.trim().is_empty())
            .ok_or(KeyError::MissingEnvKey("ENCRYPTION_KEY"))?;
        let enc = decode_key(enc).ok_or(KeyError::BadEnvKey("ENCRYPTION_KEY"))?;
        let hmac = match hmac_secret.filter(|s| !s.trim().is_empty()) {
            Some(h) => Some(decode_key(h).ok_or(KeyError::BadEnvKey("AUTH_HMAC_SECRET"))?),
            None => None,
        };
        let given_hmac = hmac.is_some();
        let keys = Self {
            sealer: SecretBox::new(&enc),
            hmac: hmac.unwrap_or_else(Self::random_key),
        };
        Ok((keys, given_hmac))
    }

    /// The keys a data directory was used with, never generating one: each from its file in
    /// `data_dir`, else from the given value (a proxy started with the variable writes no
    /// file). For reading a store that already exists (`migrate`).
    pub fn existing(
        data_dir: &Path,
        encryption_key: Option<&str>,
        hmac_secret: Option<&str>,
    ) -> Result<Self, KeyError> {
        let read = |file: &str, env_name: &'static str, given: Option<&str>| {
            let path = data_dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(s) => decode_key(&s).ok_or_else(|| KeyError::File {
                    path: path.display().to_string(),
                    reason: "not base64 of 32 bytes".into(),
                }),
                Err(_) => given
                    .filter(|s| !s.trim().is_empty())
                    .ok_or(KeyError::MissingEnvKey(env_name))
                    .and_then(|b64| decode_key(b64).ok_or(KeyError::BadEnvKey(env_name))),
            }
        };
        let enc = read("encryption.key", "ENCRYPTION_KEY", encryption_key)?;
        Ok(Self {
            sealer: SecretBox::new(&enc),
            hmac: read("hmac.key", "AUTH_HMAC_SECRET", hmac_secret)?,
        })
    }

    /// These keys with `hmac` as the cookie key.
    pub fn with_hmac(self, hmac: &[u8]) -> Result<Self, KeyError> {
        let hmac: [u8; 32] = hmac.try_into().map_err(|_| KeyError::Open)?;
        Ok(Self {
            hmac: Zeroizing::new(hmac),
            ..self
        })
    }

    /// 32 random bytes, for a key generated once.
    pub fn random_key() -> Zeroizing<[u8; 32]> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(key.as_mut());
        key
    }

    /// Fresh random keys, for tests.
    pub fn ephemeral() -> Self {
        let mut enc = Zeroizing::new([0u8; 32]);
        let mut hmac = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(enc.as_mut());
        rand::rng().fill_bytes(hmac.as_mut());
        Self {
            sealer: SecretBox::new(&enc),
            hmac,
        }
    }
}

fn decode_key(b64: &str) -> Option<Zeroizing<[u8; 32]>> {
    let bytes = Zeroizing::new(STANDARD.decode(b64.trim()).ok()?);
    let arr: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(Zeroizing::new(arr))
}

fn key_from(
    data_dir: &Path,
    file: &str,
    env_name: &'static str,
    given: Option<&str>,
) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    if let Some(b64) = given.filter(|s| !s.trim().is_empty()) {
        return decode_key(b64).ok_or(KeyError::BadEnvKey(env_name));
    }
    let path = data_dir.join(file);
    let file_err = |reason: String| KeyError::File {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => decode_key(&s).ok_or_else(|| file_err("not base64 of 32 bytes; delete it to generate a new one (sealed secrets are then lost)".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = Zeroizing::new([0u8; 32]);
            rand::rng().fill_bytes(key.as_mut());
            let b64 = Zeroizing::new(STANDARD.encode(key.as_ref()));
            write_private(&path, b64.as_bytes()).map_err(|e| file_err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(file_err(e.to_string())),
    }
}

/// Creates `path` with mode 0600 (never readable by others, even for a moment) and syncs it.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_aad_binding() {
        let k = Keys::ephemeral();
        let sealed = k.sealer.seal(b"a", b"hello").unwrap();
        assert_eq!(k.sealer.open(b"a", &sealed).unwrap().as_slice(), b"hello");
        assert!(k.sealer.open(b"b", &sealed).is_err());
        assert!(Keys::ephemeral().sealer.open(b"a", &sealed).is_err());
    }

    #[test]
    fn generated_keys_persist_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let a = Keys::load(dir.path(), None, None).unwrap();
        let b = Keys::load(dir.path(), None, None).unwrap();
        assert_eq!(*a.hmac, *b.hmac);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("encryption.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            Keys::load(dir.path(), Some("short"), None),
            Err(KeyError::BadEnvKey(_))
        ));
    }
}
