//! Tokens signed here with the fixture keys in `tests/fixtures/jwt/` (see its README).

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use super::*;

const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const RSA_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../../tests/fixtures/jwt/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../tests/fixtures/jwt/ec_public.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"sub": "user-42", "exp": now() + 600})
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn rs256(claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
    encode(&header, claims, &key).unwrap()
}

fn es256(claims: &Value, kid: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid.map(str::to_owned);
    let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
    encode(&header, claims, &key).unwrap()
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

fn verifier(config: JwtConfig) -> JwtVerifier {
    JwtVerifier::new(config).unwrap()
}

fn hs_verifier() -> JwtVerifier {
    verifier(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        ..JwtConfig::default()
    })
}

fn rs_verifier() -> JwtVerifier {
    verifier(JwtConfig {
        public_key_pem: Some(RSA_PUBLIC.to_owned()),
        ..JwtConfig::default()
    })
}

fn jwks_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt/jwks.json")
}

#[test]
fn a_valid_hs256_token_gives_its_subject() {
    let exp = now() + 600;
    let token = hs256(&json!({"sub": "user-42", "exp": exp}), SECRET.as_bytes());
    let principal = hs_verifier().verify(&token).unwrap();
    assert_eq!(
        principal,
        JwtPrincipal {
            subject: "user-42".to_owned(),
            scopes: None,
            expires_at: Some(exp),
        }
    );
    assert_eq!(hs_verifier().accepted_algorithms(), ["HS256"]);
}

#[test]
fn expired_tokens_are_refused_beyond_the_leeway() {
    let verifier = hs_verifier();
    let expired = hs256(&json!({"sub": "u", "exp": now() - 3600}), SECRET.as_bytes());
    assert_eq!(verifier.verify(&expired), Err(JwtError::Expired));
    let within_leeway = hs256(&json!({"sub": "u", "exp": now() - 5}), SECRET.as_bytes());
    assert!(verifier.verify(&within_leeway).is_ok());
}

#[test]
fn tokens_not_yet_valid_are_refused() {
    let token = hs256(
        &json!({"sub": "u", "exp": now() + 7200, "nbf": now() + 3600}),
        SECRET.as_bytes(),
    );
    assert_eq!(hs_verifier().verify(&token), Err(JwtError::NotYetValid));
    let started = hs256(
        &json!({"sub": "u", "exp": now() + 7200, "nbf": now() - 10}),
        SECRET.as_bytes(),
    );
    assert!(hs_verifier().verify(&started).is_ok());
}

#[test]
fn a_token_signed_with_another_secret_has_a_bad_signature() {
    let token = hs256(&claims(), b"another-secret-that-is-also-long-enough!!");
    let err = hs_verifier().verify(&token).unwrap_err();
    assert_eq!(err, JwtError::BadSignature);
    assert!(!err.to_string().contains(SECRET));
}

#[test]
fn a_tampered_payload_has_a_bad_signature() {
    let token = hs256(&claims(), SECRET.as_bytes());
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged = b64(&json!({"sub": "admin", "exp": now() + 600}));
    parts[1] = &forged;
    assert_eq!(
        hs_verifier().verify(&parts.join(".")),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn alg_none_is_refused() {
    let header = b64(&json!({"alg": "none", "typ": "JWT"}));
    let token = format!("{header}.{}.", b64(&claims()));
    assert!(looks_like_jwt(&token));
    for verifier in [hs_verifier(), rs_verifier()] {
        assert_eq!(
            verifier.verify(&token),
            Err(JwtError::AlgorithmNotAccepted("none".to_owned()))
        );
    }
    let header = b64(&json!({"alg": "NONE"}));
    assert!(matches!(
        hs_verifier().verify(&format!("{header}.{}.", b64(&claims()))),
        Err(JwtError::AlgorithmNotAccepted(_))
    ));
}

#[test]
fn a_valid_rs256_token_is_accepted() {
    let token = rs256(&claims(), None);
    assert_eq!(rs_verifier().verify(&token).unwrap().subject, "user-42");
    assert_eq!(rs_verifier().accepted_algorithms(), ["RS256"]);
    // An HS256-only verifier does not take it.
    assert_eq!(
        hs_verifier().verify(&token),
        Err(JwtError::AlgorithmNotAccepted("RS256".to_owned()))
    );
}

#[test]
fn an_hs256_token_keyed_with_the_rsa_public_key_is_refused() {
    // The classic confusion: the attacker knows the public key and uses it as an HMAC secret.
    let token = hs256(&claims(), RSA_PUBLIC.as_bytes());
    assert_eq!(
        rs_verifier().verify(&token),
        Err(JwtError::AlgorithmNotAccepted("HS256".to_owned()))
    );
    // With HS256 accepted too, the RSA key still never acts as an HMAC secret.
    let both = verifier(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        public_key_pem: Some(RSA_PUBLIC.to_owned()),
        ..JwtConfig::default()
    });
    assert_eq!(both.accepted_algorithms(), ["HS256", "RS256"]);
    assert_eq!(both.verify(&token), Err(JwtError::BadSignature));
    assert!(both.verify(&rs256(&claims(), None)).is_ok());
    assert!(both.verify(&hs256(&claims(), SECRET.as_bytes())).is_ok());
}

#[test]
fn a_valid_es256_token_is_accepted() {
    let verifier = verifier(JwtConfig {
        public_key_pem: Some(EC_PUBLIC.to_owned()),
        ..JwtConfig::default()
    });
    assert_eq!(verifier.accepted_algorithms(), ["ES256"]);
    assert_eq!(
        verifier.verify(&es256(&claims(), None)).unwrap().subject,
        "user-42"
    );
    assert!(matches!(
        verifier.verify(&rs256(&claims(), None)),
        Err(JwtError::AlgorithmNotAccepted(_))
    ));
}

#[test]
fn issuer_and_audience_are_checked_when_configured() {
    let verifier = verifier(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        issuer: Some("https://idp.example".to_owned()),
        audience: Some("passerelle".to_owned()),
        ..JwtConfig::default()
    });
    let token = |claims: Value| hs256(&claims, SECRET.as_bytes());
    let exp = now() + 600;
    let good = json!({"sub": "u", "exp": exp, "iss": "https://idp.example", "aud": "passerelle"});
    assert!(verifier.verify(&token(good)).is_ok());
    let listed =
        json!({"sub": "u", "exp": exp, "iss": "https://idp.example", "aud": ["x", "passerelle"]});
    assert!(verifier.verify(&token(listed)).is_ok());

    let wrong_iss =
        json!({"sub": "u", "exp": exp, "iss": "https://evil.example", "aud": "passerelle"});
    assert_eq!(
        verifier.verify(&token(wrong_iss)),
        Err(JwtError::WrongIssuer)
    );
    let wrong_aud =
        json!({"sub": "u", "exp": exp, "iss": "https://idp.example", "aud": "other-api"});
    assert_eq!(
        verifier.verify(&token(wrong_aud)),
        Err(JwtError::WrongAudience)
    );
    let no_iss = json!({"sub": "u", "exp": exp, "aud": "passerelle"});
    assert_eq!(
        verifier.verify(&token(no_iss)),
        Err(JwtError::MissingClaim("iss".to_owned()))
    );
    let no_aud = json!({"sub": "u", "exp": exp, "iss": "https://idp.example"});
    assert_eq!(
        verifier.verify(&token(no_aud)),
        Err(JwtError::MissingClaim("aud".to_owned()))
    );
}

#[test]
fn a_token_for_another_audience_is_refused_when_none_is_configured() {
    let token = hs256(
        &json!({"sub": "u", "exp": now() + 600, "aud": "other-api"}),
        SECRET.as_bytes(),
    );
    assert_eq!(hs_verifier().verify(&token), Err(JwtError::WrongAudience));
}

#[test]
fn exp_and_a_non_empty_sub_are_required() {
    let verifier = hs_verifier();
    let token = |claims: Value| hs256(&claims, SECRET.as_bytes());
    assert_eq!(
        verifier.verify(&token(json!({"sub": "u"}))),
        Err(JwtError::MissingClaim("exp".to_owned()))
    );
    assert_eq!(
        verifier.verify(&token(json!({"exp": now() + 600}))),
        Err(JwtError::MissingSubject)
    );
    assert_eq!(
        verifier.verify(&token(json!({"sub": " ", "exp": now() + 600}))),
        Err(JwtError::MissingSubject)
    );
    assert_eq!(
        verifier.verify(&token(json!({"sub": "u", "exp": "tomorrow"}))),
        Err(JwtError::MissingClaim("exp".to_owned()))
    );
    assert_eq!(
        verifier.verify(&token(json!({"sub": 42, "exp": now() + 600}))),
        Err(JwtError::MissingSubject)
    );
}

#[test]
fn scopes_come_from_a_string_or_an_array() {
    let verifier = hs_verifier();
    let with = |scope: Value| {
        let token = hs256(
            &json!({"sub": "u", "exp": now() + 600, "scope": scope}),
            SECRET.as_bytes(),
        );
        verifier.verify(&token).map(|p| p.scopes)
    };
    let expected = Some(vec!["chat".to_owned(), "embeddings".to_owned()]);
    assert_eq!(with(json!("chat  embeddings")), Ok(expected.clone()));
    assert_eq!(with(json!(["chat", "embeddings"])), Ok(expected));
    assert_eq!(with(json!("")), Ok(Some(Vec::new())));
    assert!(matches!(
        with(json!(["chat", 3])),
        Err(JwtError::Malformed(_))
    ));
    assert!(matches!(
        with(json!({"chat": true})),
        Err(JwtError::Malformed(_))
    ));
}

#[test]
fn the_scopes_claim_is_configurable() {
    let verifier = verifier(JwtConfig {
        hs256_secret: Some(SECRET.to_owned()),
        scopes_claim: "permissions".to_owned(),
        ..JwtConfig::default()
    });
    let token = hs256(
        &json!({"sub": "u", "exp": now() + 600, "scope": "ignored", "permissions": ["admin"]}),
        SECRET.as_bytes(),
    );
    assert_eq!(
        verifier.verify(&token).unwrap().scopes,
        Some(vec!["admin".to_owned()])
    );
}

#[test]
fn jwks_keys_are_chosen_by_kid() {
    let verifier = verifier(JwtConfig {
        jwks_path: Some(jwks_path()),
        ..JwtConfig::default()
    });
    assert_eq!(verifier.accepted_algorithms(), ["ES256", "RS256"]);
    assert!(verifier.verify(&rs256(&claims(), Some("rsa-1"))).is_ok());
    assert!(verifier.verify(&es256(&claims(), Some("ec-1"))).is_ok());
    assert!(
        verifier.verify(&rs256(&claims(), None)).is_ok(),
        "no kid: try the RS256 keys"
    );
    assert_eq!(
        verifier.verify(&rs256(&claims(), Some("rsa-2"))),
        Err(JwtError::UnknownKey)
    );
    // A kid naming a key of another algorithm finds nothing either.
    assert_eq!(
        verifier.verify(&rs256(&claims(), Some("ec-1"))),
        Err(JwtError::UnknownKey)
    );
}

#[test]
fn bad_configurations_are_refused_clearly() {
    assert!(matches!(
        JwtVerifier::new(JwtConfig::default()),
        Err(JwtConfigError::NoKeys)
    ));
    let weak = JwtVerifier::new(JwtConfig {
        hs256_secret: Some("short-secret".to_owned()),
        ..JwtConfig::default()
    })
    .unwrap_err();
    assert!(matches!(weak, JwtConfigError::WeakSecret));
    assert!(!weak.to_string().contains("short-secret"));
    assert!(matches!(
        JwtVerifier::new(JwtConfig {
            public_key_pem: Some(
                "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n".to_owned()
            ),
            ..JwtConfig::default()
        }),
        Err(JwtConfigError::InvalidPublicKey(_))
    ));
    assert!(matches!(
        JwtVerifier::new(JwtConfig {
            jwks_path: Some(PathBuf::from("/nonexistent/jwks.json")),
            ..JwtConfig::default()
        }),
        Err(JwtConfigError::JwksRead { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let only_encryption = dir.path().join("jwks.json");
    std::fs::write(
        &only_encryption,
        r#"{"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        JwtVerifier::new(JwtConfig {
            jwks_path: Some(only_encryption),
            ..JwtConfig::default()
        }),
        Err(JwtConfigError::InvalidJwks { .. })
    ));
}

#[test]
fn jwts_are_told_apart_from_api_keys() {
    assert!(looks_like_jwt(&hs256(&claims(), SECRET.as_bytes())));
    assert!(looks_like_jwt(&rs256(&claims(), None)));
    assert!(!looks_like_jwt("psk-0123456789abcdef"));
    assert!(!looks_like_jwt("a.b.c"));
    assert!(!looks_like_jwt(""));
    assert!(!looks_like_jwt(".."));
    let no_alg = format!("{}.{}.", b64(&json!({"typ": "JWT"})), b64(&claims()));
    assert!(!looks_like_jwt(&no_alg));
    let token = hs256(&claims(), SECRET.as_bytes());
    assert!(!looks_like_jwt(&format!("{token}.extra")));
    assert!(!looks_like_jwt(&format!("{token}=")));
}

#[test]
fn malformed_tokens_are_refused_without_panicking() {
    let verifier = hs_verifier();
    for token in ["", "psk-abc", "a.b.c", "a.b", "x.y.z.w", "....", "é.é.é"] {
        assert!(
            matches!(verifier.verify(token), Err(JwtError::Malformed(_))),
            "{token:?}"
        );
    }
    let huge = "a".repeat(MAX_TOKEN_LEN + 1);
    assert!(matches!(
        verifier.verify(&huge),
        Err(JwtError::Malformed(_))
    ));
    // A header that is JSON but whose payload is not.
    let token = format!("{}.bm90IGpzb24.", b64(&json!({"alg": "HS256"})));
    assert!(verifier.verify(&token).is_err());
}

#[test]
fn debug_output_holds_no_key_material() {
    let text = format!("{:?}", hs_verifier());
    assert!(!text.contains(SECRET), "{text}");
    assert!(text.contains("HS256"));
}
