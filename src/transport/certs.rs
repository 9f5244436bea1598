//! Certificates and keys on disk: PEM loading, ferry's self-signed server certificate, the test CA.
//!
//! Everything that touches certificate files lives here so the TLS code only sees parsed DER.
//! Loading accepts a certificate chain (leaf first) and a private key in PKCS#8, PKCS#1 or SEC1 PEM.
//! A file the user named is only ever read, never written. The self-signed pair under a state
//! directory is generated only when *both* files are missing; with one of them present ferry stops
//! instead of overwriting it (the reference server silently replaced the survivor).
//!
//! The self-signed pair lives in `<state>/tls/`, reached from the state folder's descriptor
//! ([`Dir`]): `tls/` is opened without following a link and must be private, the key is
//! created `O_CREAT | O_EXCL | O_NOFOLLOW` with mode 0600 from the start, and both files are
//! read back through `O_NOFOLLOW` opens. `ferry certs --out DIR` ([`write_test_certs`]) replaces
//! its four files atomically: each is written under a fresh name (`O_EXCL | O_NOFOLLOW`), given
//! its mode explicitly (keys 0600, certificates 0644, whatever the umask or the old file's mode),
//! synced and renamed over the old name, so a link planted under a name is replaced, never
//! followed.
//!
//! Out of scope: building rustls configurations (see `tls`), certificate revocation, and rotation.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dir::Dir;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::TransportError;

/// Common name of the generated self-signed server certificate.
pub const SELF_SIGNED_CN: &str = "ferry self-signed";

/// Years of validity given to generated certificates, counted from the start of the current year.
const VALIDITY_YEARS: i32 = 20;

/// File names of the self-signed pair inside `<state_dir>/tls/`.
pub const CERT_FILE: &str = "cert.pem";
/// See [`CERT_FILE`].
pub const KEY_FILE: &str = "key.pem";

/// Reads every certificate in a PEM file, in file order (leaf first for a server chain).
/// A file without any CERTIFICATE block is an error.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| pem_error(path, e))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(TransportError::Pem {
            path: path.to_path_buf(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, e))
}

/// [`load_certs`] of PEM bytes already read; `origin` names them in errors.
pub fn parse_certs(
    pem: &[u8],
    origin: &Path,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(origin, e))?;
    if certs.is_empty() {
        return Err(TransportError::Pem {
            path: origin.to_path_buf(),
            detail: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// [`load_key`] of PEM bytes already read; `origin` names them in errors.
pub fn parse_key(pem: &[u8], origin: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| pem_error(origin, e))
}

fn pem_error(path: &Path, e: pem::Error) -> TransportError {
    match e {
        pem::Error::Io(source) => TransportError::Io {
            what: format!("pem: read {}", path.display()),
            source,
        },
        pem::Error::NoItemsFound => TransportError::Pem {
            path: path.to_path_buf(),
            detail: "no private key block found (expected PKCS#8, PKCS#1 or SEC1)".into(),
        },
        other => TransportError::Pem {
            path: path.to_path_buf(),
            detail: other.to_string().to_lowercase(),
        },
    }
}

/// SHA-256 of a DER certificate as uppercase hex pairs joined by colons ("AB:CD:...").
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02X}"));
    }
    out
}

/// The self-signed pair of a state folder, as [`ensure_self_signed_in`] found or made it.
#[derive(Debug)]
pub struct SelfSigned {
    /// Paths of the two files (for messages).
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// Their contents, read through `O_NOFOLLOW` opens of `tls/`'s descriptor.
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Whether the pair was generated now.
    pub generated: bool,
}

/// Largest PEM file read back from the state folder.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Makes sure `<state>/tls/{cert,key}.pem` exist, generating them when both are missing, and
/// reads them. `state` is the state folder's descriptor: `tls/` is created (0700) or opened
/// beneath it without following a link and must be private; nothing is reached by path.
pub fn ensure_self_signed_in(state: &Dir) -> Result<SelfSigned, TransportError> {
    let dir = state
        .private_subdir("tls", true)
        .map_err(|source| TransportError::Io {
            what: format!("tls: open {}", state.join("tls").display()),
            source,
        })?;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let has_cert = exists(&dir, CERT_FILE)?;
    let has_key = exists(&dir, KEY_FILE)?;
    let generated = match (has_cert, has_key) {
        (true, true) => false,
        (true, false) => {
            return Err(TransportError::PartialKeyPair {
                present: cert_path,
                missing: key_path,
            })
        }
        (false, true) => {
            return Err(TransportError::PartialKeyPair {
                present: key_path,
                missing: cert_path,
            })
        }
        (false, false) => {
            let (cert_pem, key_pem) = generate_self_signed()?;
            // The key first: if we die between the two writes, the next start finds a lone key
            // and refuses, rather than serving a certificate whose key never reached the disk.
            write_new(&dir, KEY_FILE, key_pem.as_bytes(), 0o600)?;
            write_new(&dir, CERT_FILE, cert_pem.as_bytes(), 0o644)?;
            true
        }
    };
    Ok(SelfSigned {
        cert_pem: read_pem(&dir, CERT_FILE)?,
        key_pem: read_pem(&dir, KEY_FILE)?,
        cert_path,
        key_path,
        generated,
    })
}

/// [`ensure_self_signed_in`] of the folder at `state_dir` (opened by that path), returning the
/// two paths and whether they were generated now.
#[cfg(test)]
pub(crate) fn ensure_self_signed(
    state_dir: &Path,
) -> Result<(PathBuf, PathBuf, bool), TransportError> {
    let state = Dir::open(state_dir).map_err(|source| TransportError::Io {
        what: format!("tls: open {}", state_dir.display()),
        source,
    })?;
    let s = ensure_self_signed_in(&state)?;
    Ok((s.cert_path, s.key_path, s.generated))
}

/// Whether `dir/name` exists (a link counts: it is never followed, and reading it fails).
fn exists(dir: &Dir, name: &str) -> Result<bool, TransportError> {
    match dir.stat_at(OsStr::new(name)) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(TransportError::Io {
            what: format!("tls: stat {}", dir.join(name).display()),
            source,
        }),
    }
}

/// Reads `dir/name` (a regular file, never through a link), at most [`MAX_PEM_BYTES`].
fn read_pem(dir: &Dir, name: &str) -> Result<Vec<u8>, TransportError> {
    let io_err = |source| TransportError::Io {
        what: format!("tls: read {}", dir.join(name).display()),
        source,
    };
    let f = dir.open_read(OsStr::new(name)).map_err(io_err)?;
    let mut bytes = Vec::new();
    f.take(MAX_PEM_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    Ok(bytes)
}

/// Creates `dir/name` (which must not exist: `O_EXCL | O_NOFOLLOW`) with `mode` from the start,
/// so a key is never readable by others even for an instant.
fn write_new(dir: &Dir, name: &str, bytes: &[u8], mode: u32) -> Result<(), TransportError> {
    let io_err = |source| TransportError::Io {
        what: format!("tls: write {}", dir.join(name).display()),
        source,
    };
    let mut f = dir.create_new(OsStr::new(name), mode).map_err(io_err)?;
    f.write_all(bytes).map_err(io_err)?;
    f.sync_all().map_err(io_err)
}

/// Replaces `dir/name` atomically with `bytes` of exactly `mode`: a fresh temporary
/// (`O_EXCL | O_NOFOLLOW`, mode 0600 until it is set), synced, renamed over the name (a link
/// there is replaced, never followed).
fn write_replace(dir: &Dir, name: &str, bytes: &[u8], mode: u32) -> Result<(), TransportError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let io_err = |source| TransportError::Io {
        what: format!("certs: write {}", dir.join(name).display()),
        source,
    };
    let mut tries = 0;
    let (tmp, mut f) = loop {
        let tmp = format!(
            ".{name}.tmp.{}.{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        match dir.create_new(OsStr::new(&tmp), 0o600) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            Err(e) => return Err(io_err(e)),
        }
    };
    let result = f
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .and_then(|()| f.write_all(bytes))
        .and_then(|()| f.sync_all())
        .and_then(|()| dir.rename(OsStr::new(&tmp), dir, OsStr::new(name)));
    drop(f);
    if let Err(e) = result {
        let _ = dir.remove_file(OsStr::new(&tmp));
        return Err(io_err(e));
    }
    Ok(())
}

fn cert_error(e: rcgen::Error) -> TransportError {
    TransportError::Cert(format!("generate: {e}").to_lowercase())
}

/// Validity window: from January 1st of last year (tolerates skewed peer clocks) for
/// [`VALIDITY_YEARS`].
fn set_validity(params: &mut CertificateParams) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Average Gregorian year; being off by a day around New Year does not matter here.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + VALIDITY_YEARS, 1, 1);
}

/// The SANs every ferry-generated server certificate carries.
fn loopback_sans() -> Result<Vec<SanType>, TransportError> {
    Ok(vec![
        SanType::DnsName("localhost".to_string().try_into().map_err(cert_error)?),
        SanType::IpAddress([127, 0, 0, 1].into()),
        SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
    ])
}

/// Parameters of a server leaf: end entity, digitalSignature, serverAuth, SKI and AKI.
fn leaf_params(cn: &str) -> Result<CertificateParams, TransportError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.subject_alt_names = loopback_sans()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params);
    Ok(params)
}

/// Generates ferry's self-signed server certificate; returns (certificate PEM, PKCS#8 key PEM).
pub fn generate_self_signed() -> Result<(String, String), TransportError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
    let cert = leaf_params(SELF_SIGNED_CN)?
        .self_signed(&key)
        .map_err(cert_error)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates a test CA and a leaf for `localhost`, 127.0.0.1 and ::1 signed by it into `dir`
/// (created if needed, then opened once): `ca.pem`, `ca-key.pem`, `cert.pem` (leaf then CA) and
/// `key.pem`. Existing files of those names are replaced atomically, links under those names
/// included (never followed); keys get mode 0600, certificates 0644.
pub fn write_test_certs(dir: &Path) -> Result<(), TransportError> {
    let dir = Dir::create_all(dir).map_err(|source| TransportError::Io {
        what: format!("certs: create {}", dir.display()),
        source,
    })?;
    let dir = &dir;
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ferry test CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.use_authority_key_identifier_extension = true;
    set_validity(&mut ca_params);
    let ca = ca_params.self_signed(&ca_key).map_err(cert_error)?;

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_error)?;
    let leaf = leaf_params("ferry test server")?
        .signed_by(&leaf_key, &ca, &ca_key)
        .map_err(cert_error)?;

    write_replace(dir, "ca-key.pem", ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_replace(dir, "ca.pem", ca.pem().as_bytes(), 0o644)?;
    write_replace(dir, "key.pem", leaf_key.serialize_pem().as_bytes(), 0o600)?;
    let chain = format!("{}{}", leaf.pem(), ca.pem());
    write_replace(dir, "cert.pem", chain.as_bytes(), 0o644)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tests::temp_dir;
    use std::fs;

    #[test]
    fn fingerprint_formats_uppercase_colon_pairs() {
        // SHA-256("") = e3b0c442...b855
        let fp = fingerprint(b"");
        assert!(fp.starts_with("E3:B0:C4:42:"), "{fp}");
        assert!(fp.ends_with(":B8:55"), "{fp}");
        assert_eq!(fp.len(), 32 * 3 - 1);
    }

    #[test]
    fn self_signed_is_generated_once_with_private_key_mode() {
        let dir = temp_dir("gen-once");
        let (cert, key, generated) = ensure_self_signed(&dir).unwrap();
        assert!(generated);
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let before = fs::read(&cert).unwrap();
        let (_, _, generated) = ensure_self_signed(&dir).unwrap();
        assert!(!generated);
        assert_eq!(fs::read(&cert).unwrap(), before);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn one_of_two_missing_is_an_error_and_nothing_is_written() {
        let dir = temp_dir("half-pair");
        let (cert, key, _) = ensure_self_signed(&dir).unwrap();
        let cert_bytes = fs::read(&cert).unwrap();
        fs::remove_file(&key).unwrap();
        let err = ensure_self_signed(&dir).unwrap_err();
        assert!(
            matches!(err, TransportError::PartialKeyPair { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("key.pem"), "{err}");
        assert!(!key.exists());
        assert_eq!(fs::read(&cert).unwrap(), cert_bytes);

        // And the other way round: a lone key is kept as is.
        fs::remove_file(&cert).unwrap();
        fs::write(&key, b"not touched").unwrap();
        let err = ensure_self_signed(&dir).unwrap_err();
        assert!(
            matches!(err, TransportError::PartialKeyPair { .. }),
            "{err}"
        );
        assert!(!cert.exists());
        assert_eq!(fs::read(&key).unwrap(), b"not touched");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_named_file_is_an_io_error() {
        let dir = temp_dir("missing");
        let err = load_certs(&dir.join("nope.pem")).unwrap_err();
        assert!(matches!(err, TransportError::Io { .. }), "{err}");
        let err = load_key(&dir.join("nope.pem")).unwrap_err();
        assert!(matches!(err, TransportError::Io { .. }), "{err}");
        assert!(!dir.join("nope.pem").exists());
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn pem_without_blocks_is_a_pem_error() {
        let dir = temp_dir("empty-pem");
        let path = dir.join("empty.pem");
        fs::write(&path, b"hello\n").unwrap();
        let err = load_certs(&path).unwrap_err();
        assert!(matches!(err, TransportError::Pem { .. }), "{err}");
        let err = load_key(&path).unwrap_err();
        assert!(matches!(err, TransportError::Pem { .. }), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_load_in_pkcs8_sec1_and_pkcs1() {
        let dir = temp_dir("key-formats");
        let (_, key_pem) = generate_self_signed().unwrap();
        let p8 = dir.join("p8.pem");
        fs::write(&p8, &key_pem).unwrap();
        assert!(matches!(load_key(&p8).unwrap(), PrivateKeyDer::Pkcs8(_)));
        // SEC1 and PKCS#1 only differ in the PEM label as far as the loader is concerned: the
        // DER is handed to rustls untouched, so relabelling the block checks the dispatch.
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n");
        let sec1 = dir.join("sec1.pem");
        fs::write(
            &sec1,
            format!("-----BEGIN EC PRIVATE KEY-----\n{body}\n-----END EC PRIVATE KEY-----\n"),
        )
        .unwrap();
        assert!(matches!(load_key(&sec1).unwrap(), PrivateKeyDer::Sec1(_)));
        let pkcs1 = dir.join("pkcs1.pem");
        fs::write(
            &pkcs1,
            format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n-----END RSA PRIVATE KEY-----\n"),
        )
        .unwrap();
        assert!(matches!(load_key(&pkcs1).unwrap(), PrivateKeyDer::Pkcs1(_)));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn generated_cert_verifies_with_openssl() {
        // A test that cannot run fails (STYLE 28): openssl is part of the test toolchain.
        let out = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .unwrap_or_else(|e| panic!("openssl is needed for this test and cannot run: {e}"));
        assert!(out.status.success());
        let dir = temp_dir("openssl");
        let (cert, _, _) = ensure_self_signed(&dir).unwrap();
        // J32: the name and the IPs it is made for, and no other.
        for (check, ok) in [
            (&["-verify_hostname", "localhost"][..], true),
            (&["-verify_ip", "127.0.0.1"], true),
            (&["-verify_ip", "::1"], true),
            (&["-verify_hostname", "example.com"], false),
            (&["-verify_ip", "127.0.0.2"], false),
        ] {
            let out = std::process::Command::new("openssl")
                .arg("verify")
                .arg("-x509_strict")
                .arg("-purpose")
                .arg("sslserver")
                .args(check)
                .arg("-CAfile")
                .arg(&cert)
                .arg(&cert)
                .output()
                .unwrap();
            assert_eq!(
                out.status.success(),
                ok,
                "openssl verify {check:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // The test CA chain too.
        let tdir = dir.join("test-certs");
        write_test_certs(&tdir).unwrap();
        let out = std::process::Command::new("openssl")
            .arg("verify")
            .arg("-x509_strict")
            .arg("-CAfile")
            .arg(tdir.join("ca.pem"))
            .arg(tdir.join("cert.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn test_certs_replace_links_and_old_modes_never_follow_them() {
        let dir = temp_dir("test-certs-links");
        let victim = temp_dir("test-certs-victim");
        fs::write(victim.join("target"), b"keep me").unwrap();
        std::os::unix::fs::symlink(victim.join("target"), dir.join("key.pem")).unwrap();
        std::os::unix::fs::symlink(victim.join("absent"), dir.join("ca-key.pem")).unwrap();
        fs::write(dir.join("cert.pem"), b"old").unwrap();
        fs::set_permissions(dir.join("cert.pem"), fs::Permissions::from_mode(0o666)).unwrap();
        write_test_certs(&dir).unwrap();
        assert_eq!(fs::read(victim.join("target")).unwrap(), b"keep me");
        assert!(!victim.join("absent").exists());
        for (name, mode) in [
            ("key.pem", 0o600),
            ("ca-key.pem", 0o600),
            ("cert.pem", 0o644),
            ("ca.pem", 0o644),
        ] {
            let m = fs::symlink_metadata(dir.join(name)).unwrap();
            assert!(m.is_file(), "{name}");
            assert_eq!(m.permissions().mode() & 0o777, mode, "{name}");
        }
        load_key(&dir.join("key.pem")).unwrap();
        let mut left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["ca-key.pem", "ca.pem", "cert.pem", "key.pem"]);
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&victim);
    }

    #[test]
    fn a_tls_folder_that_is_a_link_is_refused_and_key_links_are_not_read() {
        let dir = temp_dir("tls-link");
        let elsewhere = temp_dir("tls-link-elsewhere");
        std::os::unix::fs::symlink(&elsewhere, dir.join("tls")).unwrap();
        let err = ensure_self_signed(&dir).unwrap_err();
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert_eq!(fs::read_dir(&elsewhere).unwrap().count(), 0);
        fs::remove_file(dir.join("tls")).unwrap();
        // Both names present as links to someone's files: never read, never written.
        fs::create_dir(dir.join("tls")).unwrap();
        fs::write(elsewhere.join("k"), b"not a key").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("k"), dir.join("tls/key.pem")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join("k"), dir.join("tls/cert.pem")).unwrap();
        let err = ensure_self_signed(&dir).unwrap_err();
        assert!(matches!(err, TransportError::Io { .. }), "{err}");
        assert_eq!(fs::read(elsewhere.join("k")).unwrap(), b"not a key");
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&elsewhere);
    }

    #[test]
    fn test_certs_files_and_modes() {
        let dir = temp_dir("test-certs");
        write_test_certs(&dir).unwrap();
        assert_eq!(load_certs(&dir.join("cert.pem")).unwrap().len(), 2);
        assert_eq!(load_certs(&dir.join("ca.pem")).unwrap().len(), 1);
        load_key(&dir.join("key.pem")).unwrap();
        load_key(&dir.join("ca-key.pem")).unwrap();
        for k in ["key.pem", "ca-key.pem"] {
            let mode = fs::metadata(dir.join(k)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{k}");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
