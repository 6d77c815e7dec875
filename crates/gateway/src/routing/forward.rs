//! A client's request body as it is forwarded to an upstream: the few top-level fields the
//! gateway reads are borrowed where they lie, and the body sent upstream is the client's bytes
//! with only those fields rewritten. Parsing the whole body into a JSON tree and serialising it
//! again, per request, was most of the gateway's own CPU time on a fast upstream.

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::extract::parse_json;

/// The top-level fields read; every other one is skipped without being built.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: &'a RawValue,
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    // Kept when `null` too, so that it is replaced rather than sent twice.
    #[serde(borrow, default, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(default)]
    retrieval: Option<IgnoredAny>,
}

/// A field's raw value whatever it is, `null` included (an `Option` alone reads `null` as absent).
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// A chat or completion body on its way to an upstream.
#[derive(Debug, Clone)]
pub(crate) struct ForwardBody<'a> {
    raw: &'a [u8],
    /// Where the `model` value lies in `raw`.
    model: Range<usize>,
    streaming: bool,
    stream_options: Option<&'a RawValue>,
    messages: Option<&'a RawValue>,
    prompt: Option<&'a RawValue>,
    has_retrieval: bool,
}

impl<'a> ForwardBody<'a> {
    /// Reads `raw`, a JSON object with a `model`; anything else is the client's 400.
    pub(crate) fn parse(raw: &'a [u8]) -> Result<Self, ApiError> {
        // serde would also read a struct from an array, by position.
        if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::invalid_request(
                "The request body must be a JSON object.",
            ));
        }
        let fields: Fields<'a> = parse_json(raw)?;
        Ok(Self {
            raw,
            model: span_of(raw, fields.model),
            streaming: fields.stream.is_some_and(|s| s.get() == "true"),
            stream_options: fields.stream_options,
            messages: fields.messages,
            prompt: fields.prompt,
            has_retrieval: fields.retrieval.is_some(),
        })
    }

    /// The `model` named, when it is a string.
    pub(crate) fn model(&self) -> Option<String> {
        serde_json::from_slice(&self.raw[self.model.clone()]).ok()
    }

    /// The choices asked per prompt (`n`), when given once as a count. Read on demand: only
    /// the output checks and refusals need it, and an odd `n` is the upstream's to judge.
    pub(crate) fn n(&self) -> Option<u32> {
        #[derive(Deserialize)]
        struct Choices {
            n: Option<u32>,
        }
        serde_json::from_slice::<Choices>(self.raw)
            .ok()
            .and_then(|choices| choices.n)
    }

    pub(crate) fn streaming(&self) -> bool {
        self.streaming
    }

    pub(crate) fn has_retrieval(&self) -> bool {
        self.has_retrieval
    }

    /// Whether the client asked for the usage chunk of a stream.
    pub(crate) fn wants_usage(&self) -> bool {
        self.stream_options_object()
            .and_then(|options| options.get("include_usage").and_then(Value::as_bool))
            .unwrap_or(false)
    }

    fn stream_options_object(&self) -> Option<Map<String, Value>> {
        self.stream_options
            .and_then(|raw| serde_json::from_str::<Map<String, Value>>(raw.get()).ok())
    }

    /// The client's `messages` (chat) or `prompt` (completions), parsed on demand.
    pub(crate) fn messages(&self) -> Option<Value> {
        self.messages
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    pub(crate) fn prompt(&self) -> Option<Value> {
        self.prompt
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
    }

    /// The body to send: the client's, naming `model`, and asking for the usage chunk of a
    /// stream when `ask_usage`. Built in one buffer: this runs for every relayed request.
    pub(crate) fn to_upstream(&self, model: &str, ask_usage: bool) -> Bytes {
        let model_edit = (self.model.clone(), Splice::Model(model));
        let usage_edit = ask_usage.then(|| {
            let (at, text) = self.usage_edit();
            (at, Splice::Text(text))
        });
        // The edits never overlap: the usage one is the `stream_options` value or lies just
        // inside the object's `{`, before any field.
        let (first, second) = match usage_edit {
            Some(usage) if usage.0.start < model_edit.0.start => (usage, Some(model_edit)),
            Some(usage) => (model_edit, Some(usage)),
            None => (model_edit, None),
        };
        let extra = first.1.len() + second.as_ref().map_or(0, |(_, splice)| splice.len());
        let mut out = BytesMut::with_capacity(self.raw.len() + extra);
        let mut copied = 0;
        for (range, splice) in std::iter::once(first).chain(second) {
            out.put_slice(&self.raw[copied..range.start]);
            splice.write(&mut out);
            copied = range.end;
        }
        out.put_slice(&self.raw[copied..]);
        out.freeze()
    }

    /// Where the `stream_options` asking for the usage chunk go, and what they are.
    fn usage_edit(&self) -> (Range<usize>, String) {
        let mut options = self.stream_options_object().unwrap_or_default();
        options.insert("include_usage".to_owned(), Value::Bool(true));
        let options_json = Value::Object(options).to_string();
        match self.stream_options {
            Some(raw) => (span_of(self.raw, raw), options_json),
            None => {
                // Just inside the object's `{`: the object has a `model`, so a comma follows.
                let at = self
                    .raw
                    .iter()
                    .position(|&b| b == b'{')
                    .map_or(0, |i| i + 1);
                (at..at, format!("\"stream_options\":{options_json},"))
            }
        }
    }
}

/// What replaces one span of the client's body.
enum Splice<'a> {
    /// The model's name, written as a JSON string.
    Model(&'a str),
    /// JSON text as it is.
    Text(String),
}

impl Splice<'_> {
    /// Bytes written, or near it for a model name that needs escapes.
    fn len(&self) -> usize {
        match self {
            Splice::Model(model) => model.len() + 2,
            Splice::Text(text) => text.len(),
        }
    }

    fn write(&self, out: &mut BytesMut) {
        match self {
            // Writing a `&str` to memory cannot fail.
            Splice::Model(model) => {
                let _ = serde_json::to_writer(out.writer(), model);
            }
            Splice::Text(text) => out.put_slice(text.as_bytes()),
        }
    }
}

/// Where `value`, borrowed from `raw` by the parser, lies in it.
fn span_of(raw: &[u8], value: &RawValue) -> Range<usize> {
    let start = value.get().as_ptr() as usize - raw.as_ptr() as usize;
    start..start + value.get().len()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn forwarded(body: &str, model: &str, ask_usage: bool) -> Value {
        let body = ForwardBody::parse(body.as_bytes()).unwrap();
        serde_json::from_slice(&body.to_upstream(model, ask_usage)).unwrap()
    }

    #[test]
    fn only_the_model_changes() {
        let body = r#"{ "messages": [{"role": "user", "content": "h\u00e9 \"x\""}],
            "model" : "alias", "temperature": 0.5, "n": 1 }"#;
        let out = forwarded(body, "real \"name\"", false);
        let mut expected: Value = serde_json::from_str(body).unwrap();
        expected["model"] = json!("real \"name\"");
        assert_eq!(out, expected);
    }

    #[test]
    fn usage_is_asked_for_with_or_without_stream_options() {
        let out = forwarded(r#"{"model": "m", "stream": true}"#, "u", true);
        assert_eq!(
            out,
            json!({"model": "u", "stream": true, "stream_options": {"include_usage": true}})
        );
        let body =
            r#"{"stream_options": {"include_usage": false, "x": 1}, "model": "m", "stream": true}"#;
        let parsed = ForwardBody::parse(body.as_bytes()).unwrap();
        assert!(parsed.streaming());
        assert!(!parsed.wants_usage());
        let out = forwarded(body, "u", true);
        assert_eq!(
            out["stream_options"],
            json!({"include_usage": true, "x": 1})
        );
        let out = forwarded(r#"{"model": "m", "stream_options": null}"#, "u", true);
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn fields_are_read_without_the_rest() {
        let body = ForwardBody::parse(
            br#"{"model": "m", "stream": false, "retrieval": {"k": 2}, "prompt": ["a"]}"#,
        )
        .unwrap();
        assert!(!body.streaming());
        assert!(body.has_retrieval());
        assert_eq!(body.prompt(), Some(json!(["a"])));
        assert_eq!(body.messages(), None);
        let usage = ForwardBody::parse(
            br#"{"model": "m", "stream": true, "stream_options": {"include_usage": true}}"#,
        )
        .unwrap();
        assert!(usage.wants_usage());
    }

    #[test]
    fn model_and_n_are_read_from_the_body() {
        let body = ForwardBody::parse(br#"{"model": "m\u00e9", "\u006e": 3}"#).unwrap();
        assert_eq!(body.model().as_deref(), Some("m\u{e9}"));
        assert_eq!(body.n(), Some(3));
        for odd in [
            r#""n": "2""#,
            r#""n": -1"#,
            r#""n": 2, "n": 2"#,
            r#""n": null"#,
        ] {
            let raw = format!(r#"{{"model": 5, {odd}}}"#);
            let body = ForwardBody::parse(raw.as_bytes()).unwrap();
            assert_eq!((body.model(), body.n()), (None, None), "{odd}");
        }
    }

    #[test]
    fn repeated_fields_and_nulls_read_as_a_derived_struct_would() {
        let err = ForwardBody::parse(br#"{"model": "m", "stream": null, "stream": true}"#);
        assert!(format!("{:?}", err.unwrap_err()).contains("duplicate field `stream`"));
        let body =
            ForwardBody::parse(br#"{"model": "m", "stream": null, "retrieval": null}"#).unwrap();
        assert!(!body.streaming());
        assert!(!body.has_retrieval());
        let err = ForwardBody::parse(br#"{"stream": true, "x": [1, {"model": 2}]}"#).unwrap_err();
        assert!(
            format!("{err:?}").contains("missing field `model`"),
            "{err:?}"
        );
    }

    #[test]
    fn bad_bodies_are_client_errors() {
        for body in [&b"[1]"[..], b"{\"model\": \"m\",", b"{\"stream\": true}"] {
            let err = ForwardBody::parse(body).unwrap_err();
            assert!(err.status().is_client_error(), "{err:?}");
        }
    }
}
