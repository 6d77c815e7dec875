//! JSON Web Token verification: bearer tokens issued by an identity provider, as an alternative
//! to API keys.
//!
//! The accepted algorithms are pinned by the configured keys alone: an HS256 secret accepts
//! HS256, an RSA public key RS256, an EC key ES256 (P-256) or ES384 (P-384), a JWKS each of its
//! keys' algorithms. A token whose header names anything else is refused before any signature
//! check, which shuts out `alg: none` and algorithm confusion (an HS256 token "signed" with the
//! RSA public key as its secret). Each key only ever verifies its own algorithm. `exp` and a
//! non-empty `sub` are required; `nbf` is checked when present, `iss` and `aud` when configured.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// HS256 secrets shorter than the hash output (RFC 7518 §3.2) are refused.
const MIN_SECRET_LEN: usize = 32;
/// Longer tokens are refused unread: a real JWT is a few kilobytes at most.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Which tokens to accept. At least one of the keys must be set. Its `Debug` output hides the
/// HS256 secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// A shared secret for HS256 tokens, at least 32 bytes. Default none.
    pub hs256_secret: Option<String>,
    /// A PEM public key: RSA (RS256) or EC P-256 (ES256) / P-384 (ES384). Default none.
    pub public_key_pem: Option<String>,
    /// A JWKS file (`{"keys": [...]}`) of RSA and EC public keys, chosen by the token's `kid`.
    /// Default none.
    pub jwks_path: Option<PathBuf>,
    /// The required `iss`. Default none (not checked).
    pub issuer: Option<String>,
    /// The required `aud` (one of the token's audiences). Default none: tokens that name an
    /// audience are then refused, as RFC 7519 §4.1.3 requires of a recipient not named in it.
    pub audience: Option<String>,
    /// The claim holding scopes: a space-separated string or an array of strings. Default
    /// `scope`.
    pub scopes_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`. Default 30 s.
    pub leeway: Duration,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &self.hs256_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("public_key_pem", &self.public_key_pem.is_some())
            .field("jwks_path", &self.jwks_path)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("scopes_claim", &self.scopes_claim)
            .field("leeway", &self.leeway)
            .finish()
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            hs256_secret: None,
            public_key_pem: None,
            jwks_path: None,
            issuer: None,
            audience: None,
            scopes_claim: "scope".to_owned(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// Why a verifier could not be built. Messages never include key material.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// No secret, public key or JWKS is configured.
    #[error("JWT auth needs an HS256 secret, a public key or a JWKS")]
    NoKeys,
    /// The HS256 secret is too short to be safe.
    #[error("the HS256 secret must be at least {MIN_SECRET_LEN} bytes")]
    WeakSecret,
    /// The public key is neither an RSA nor a P-256/P-384 EC public key in PEM.
    #[error("the JWT public key is not an RSA or P-256/P-384 EC public key in PEM: {0}")]
    InvalidPublicKey(String),
    /// The JWKS file cannot be read.
    #[error("cannot read the JWKS file {path}: {source}")]
    JwksRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The JWKS is not a JWK set, or has no usable signing key.
    #[error("invalid JWKS {path}: {reason}")]
    InvalidJwks { path: PathBuf, reason: String },
}

/// Why a token was refused. Messages are safe to show the client: they never echo the token or
/// any key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT: wrong shape, bad base64 or JSON, or a claim of the wrong type.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header's `alg` is not one the configured keys accept (`none` never is).
    #[error("token algorithm {0:?} is not accepted")]
    AlgorithmNotAccepted(String),
    /// The header's `kid` names no configured key.
    #[error("token key id is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is past.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token is not valid yet")]
    NotYetValid,
    /// A required claim is absent or not of its type (`exp` must be a number).
    #[error("token has no valid `{0}` claim")]
    MissingClaim(String),
    /// `sub` is absent or empty.
    #[error("token has no subject (`sub`)")]
    MissingSubject,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` does not include the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtPrincipal {
    /// The `sub` claim.
    pub subject: String,
    /// The scopes claim, when the token has one.
    pub scopes: Option<Vec<String>>,
    /// The `exp` claim, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
}

/// One verification key, bound to the one algorithm it verifies.
struct VerificationKey {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys. Build once; verification is synchronous and
/// takes microseconds (HS256) to tens of microseconds (RS256, ES256).
pub struct JwtVerifier {
    keys: Vec<VerificationKey>,
    /// The header `alg` names accepted, for the check that runs before anything else.
    accepted: BTreeSet<&'static str>,
    validation: Validation,
    scopes_claim: String,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("accepted", &self.accepted)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Loads the keys and pins the accepted algorithms to theirs.
    pub fn new(config: JwtConfig) -> Result<Self, JwtConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = &config.hs256_secret {
            if secret.len() < MIN_SECRET_LEN {
                return Err(JwtConfigError::WeakSecret);
            }
            keys.push(VerificationKey {
                algorithm: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if let Some(pem) = &config.public_key_pem {
            keys.push(public_key(pem)?);
        }
        if let Some(path) = &config.jwks_path {
            let text =
                std::fs::read_to_string(path).map_err(|source| JwtConfigError::JwksRead {
                    path: path.clone(),
                    source,
                })?;
            let jwks = jwks_keys(&text).map_err(|reason| JwtConfigError::InvalidJwks {
                path: path.clone(),
                reason,
            })?;
            keys.extend(jwks);
        }
        if keys.is_empty() {
            return Err(JwtConfigError::NoKeys);
        }
        let accepted = keys.iter().map(|k| algorithm_name(k.algorithm)).collect();
        Ok(Self {
            keys,
            accepted,
            validation: validation(&config),
            scopes_claim: config.scopes_claim,
        })
    }

    /// The algorithms accepted, e.g. `["HS256", "RS256"]`.
    pub fn accepted_algorithms(&self) -> Vec<&'static str> {
        self.accepted.iter().copied().collect()
    }

    /// Verifies `token` (without the `Bearer ` prefix) and returns its principal.
    pub fn verify(&self, token: &str) -> Result<JwtPrincipal, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed("token too long"));
        }
        let header = decode_header(token).ok_or(JwtError::Malformed("not a JWT"))?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(JwtError::Malformed("header has no `alg`"))?;
        if !self.accepted.contains(alg) {
            return Err(JwtError::AlgorithmNotAccepted(printable(alg)));
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let candidates = self.candidates(alg, kid)?;

        let mut result = Err(JwtError::BadSignature);
        for key in candidates {
            let mut validation = self.validation.clone();
            validation.algorithms = vec![key.algorithm];
            result = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
                .map_err(|e| map_error(e.kind()));
            // Only a bad signature is worth trying the next key; any other verdict is final.
            if !matches!(result, Err(JwtError::BadSignature)) {
                break;
            }
        }
        let claims = result?.claims;
        self.principal(&claims)
    }

    /// The keys that may have signed a token with this `alg` and `kid`: with a `kid`, the key
    /// of that id if keys have ids; without one, every key of the algorithm.
    fn candidates<'a>(
        &'a self,
        alg: &str,
        kid: Option<&str>,
    ) -> Result<Vec<&'a VerificationKey>, JwtError> {
        let of_alg: Vec<_> = self
            .keys
            .iter()
            .filter(|k| algorithm_name(k.algorithm) == alg)
            .collect();
        let Some(kid) = kid else { return Ok(of_alg) };
        if of_alg.iter().all(|k| k.kid.is_none()) {
            return Ok(of_alg);
        }
        let named: Vec<_> = of_alg
            .into_iter()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect();
        if named.is_empty() {
            Err(JwtError::UnknownKey)
        } else {
            Ok(named)
        }
    }

    fn principal(&self, claims: &Map<String, Value>) -> Result<JwtPrincipal, JwtError> {
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|sub| !sub.trim().is_empty())
            .ok_or(JwtError::MissingSubject)?;
        let scopes = match claims.get(&self.scopes_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(scopes)) => {
                Some(scopes.split_whitespace().map(str::to_owned).collect())
            }
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(JwtError::Malformed("scopes must be strings"))?,
            ),
            Some(_) => return Err(JwtError::Malformed("scopes must be a string or an array")),
        };
        Ok(JwtPrincipal {
            subject: subject.to_owned(),
            scopes,
            expires_at: claims.get("exp").and_then(Value::as_u64),
        })
    }
}

/// Whether `token` has the shape of a JWT (three base64url segments whose first is a JSON
/// header with an `alg`), so auth can tell one from an API key without verifying anything.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_LEN
        && decode_header(token)
            .is_some_and(|header| header.get("alg").is_some_and(Value::is_string))
}

/// The JSON header of a three-segment token, if it has one.
fn decode_header(token: &str) -> Option<Map<String, Value>> {
    let mut segments = token.split('.');
    let (header, payload, signature) = (segments.next()?, segments.next()?, segments.next()?);
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if segments.next().is_some()
        || header.is_empty()
        || payload.is_empty()
        || !(base64url(header) && base64url(payload) && base64url(signature))
    {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(header).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn validation(config: &JwtConfig) -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = config.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    // With no audience configured, `validate_aud` (on) refuses tokens that name one.
    if let Some(audience) = &config.audience {
        validation.set_audience(&[audience]);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation
}

/// A PEM public key: RSA first, then EC (whose curve picks ES256 or ES384).
fn public_key(pem: &str) -> Result<VerificationKey, JwtConfigError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
        return Ok(VerificationKey {
            algorithm: Algorithm::RS256,
            kid: None,
            key,
        });
    }
    let key = DecodingKey::from_ec_pem(pem.as_bytes())
        .map_err(|e| JwtConfigError::InvalidPublicKey(e.to_string()))?;
    let algorithm = ec_algorithm(pem).ok_or_else(|| {
        JwtConfigError::InvalidPublicKey("only P-256 and P-384 EC keys are supported".to_owned())
    })?;
    Ok(VerificationKey {
        algorithm,
        kid: None,
        key,
    })
}

/// The ECDSA algorithm of a PEM EC key, from its curve's object identifier.
fn ec_algorithm(pem: &str) -> Option<Algorithm> {
    const P256: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = STANDARD.decode(body).ok()?;
    let contains = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if contains(P256) {
        Some(Algorithm::ES256)
    } else if contains(P384) {
        Some(Algorithm::ES384)
    } else {
        None
    }
}

/// The signing keys of a JWKS, each bound to its algorithm: the JWK's `alg` when it has one,
/// else RS256 for RSA keys and the curve's ECDSA for EC keys. Encryption keys and other types are
/// skipped; a set with no usable key is an error.
fn jwks_keys(text: &str) -> Result<Vec<VerificationKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
            continue;
        }
        let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), AlgorithmParameters::RSA(_))
            | (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
            (Some(KeyAlgorithm::ES256) | None, AlgorithmParameters::EllipticCurve(ec))
                if ec.curve == EllipticCurve::P256 =>
            {
                Algorithm::ES256
            }
            (Some(KeyAlgorithm::ES384) | None, AlgorithmParameters::EllipticCurve(ec))
                if ec.curve == EllipticCurve::P384 =>
            {
                Algorithm::ES384
            }
            _ => {
                tracing::debug!(kid = ?jwk.common.key_id, "skipping a JWKS key of an unsupported type");
                continue;
            }
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        keys.push(VerificationKey {
            algorithm,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err("no RSA or P-256/P-384 EC signing key in the set".to_owned());
    }
    Ok(keys)
}

fn algorithm_name(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::HS256 => "HS256",
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        // Never configured: keys are only ever bound to the four above.
        _ => "unsupported",
    }
}

/// An attacker-chosen `alg`, made safe to put in a message and a log line.
fn printable(alg: &str) -> String {
    alg.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(16)
        .collect()
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "sub" => JwtError::MissingSubject,
        ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            JwtError::AlgorithmNotAccepted(String::new())
        }
        ErrorKind::InvalidClaimFormat(_) => JwtError::Malformed("a claim has the wrong type"),
        ErrorKind::Json(_) => JwtError::Malformed("invalid JSON"),
        ErrorKind::Base64(_) => JwtError::Malformed("invalid base64url"),
        ErrorKind::Utf8(_) => JwtError::Malformed("invalid UTF-8"),
        // A key that does not suit the signature's encoding is a signature that does not verify.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) | ErrorKind::InvalidKeyFormat => {
            JwtError::BadSignature
        }
        _ => JwtError::Malformed("invalid token"),
    }
}

#[cfg(test)]
mod tests;
