//! The request the load tool sends: its bytes, built once, and the per-request tag that keeps
//! long prompts distinct, written into a copy of those bytes in place.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, bail};

use crate::args::LoadArgs;

/// Common English words, each one token (with its leading space) in the usual BPE vocabularies.
const WORDS: [&str; 32] = [
    "the", "time", "people", "year", "way", "day", "man", "thing", "woman", "life", "child",
    "world", "school", "state", "family", "student", "group", "country", "problem", "hand", "part",
    "place", "case", "week", "company", "system", "program", "question", "work", "number", "night",
    "point",
];

/// The tag's digits: the run's, then the request's.
const RUN_DIGITS: usize = 8;
const SERIAL_DIGITS: usize = 10;

/// Where the requests go and their bytes.
pub struct Target {
    pub addr: String,
    pub request: Arc<[u8]>,
    /// Where the request's tag is, when every request gets its own.
    tag_at: Option<usize>,
    run: u64,
    serial: Arc<AtomicU64>,
}

impl Target {
    pub fn parse(args: &LoadArgs) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(&args.url)
            .with_context(|| format!("{:?} is not a URL", args.url))?;
        if url.scheme() != "http" {
            bail!("only http:// URLs are supported, not {:?}", args.url);
        }
        let host = url.host_str().context("the URL has no host")?;
        let port = url.port_or_known_default().unwrap_or(80);
        let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));

        let content = match args.prompt_tokens {
            None => "Say hello.".to_owned(),
            Some(tokens) => prompt(tokens),
        };
        let content = serde_json::to_string(&content)?;
        let before_content = format!(
            r#"{{"model":{},"messages":[{{"role":"user","content":"#,
            serde_json::to_string(&args.model)?
        );
        let mut body = format!(
            r#"{before_content}{content}}}],"max_tokens":{},"stream":{}"#,
            args.max_tokens, args.stream
        );
        if args.stream {
            body.push_str(r#","stream_options":{"include_usage":true}"#);
        }
        body.push('}');

        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
             Accept: */*\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(key) = &args.api_key {
            request.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        request.push_str("\r\n");
        // The tag's digits start after the content's opening quote and bracket.
        let tag_at = (args.prompt_tokens.is_some() && !args.same_prompt)
            .then_some(request.len() + before_content.len() + 2);
        request.push_str(&body);
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or_default();
        Ok(Self {
            addr: format!("{host}:{port}"),
            request: Arc::from(request.into_bytes()),
            tag_at,
            run,
            serial: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Makes `request` (a copy of [`Target::request`]) the next request to send.
    pub fn next(&self, request: &mut [u8]) {
        let Some(at) = self.tag_at else {
            return;
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        write_digits(&mut request[at..at + RUN_DIGITS], self.run);
        let at = at + RUN_DIGITS + 1;
        write_digits(&mut request[at..at + SERIAL_DIGITS], serial);
    }
}

/// `[00000000-0000000000]` then `tokens` words.
fn prompt(tokens: u32) -> String {
    let mut text = format!("[{}-{}]", "0".repeat(RUN_DIGITS), "0".repeat(SERIAL_DIGITS));
    for n in 0..tokens as usize {
        text.push(' ');
        // A stride prime to the vocabulary's size: every word, in no short repeating order.
        text.push_str(WORDS[(n * 7 + n / WORDS.len()) % WORDS.len()]);
    }
    text
}

/// `value`'s last `digits.len()` decimal digits, zero-padded.
fn write_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    fn target_of(extra: &[&str]) -> Target {
        let mut argv = vec!["passerelle", "bench", "--url", "http://127.0.0.1:9/v1"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Bench(bench) => Target::parse(&bench.load).unwrap(),
            _ => unreachable!(),
        }
    }

    fn body(request: &[u8]) -> serde_json::Value {
        let text = std::str::from_utf8(request).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(format!("{head}\r\n").contains(&format!("Content-Length: {}\r\n", body.len())));
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn the_default_request_is_the_small_fixed_one() {
        let target = target_of(&["--model", "m"]);
        let mut request = target.request.to_vec();
        target.next(&mut request);
        let body = body(&request);
        assert_eq!(body["messages"][0]["content"], "Say hello.");
        assert_eq!(body["max_tokens"], 16);
        assert_eq!(body["stream"], false);
        assert!(body.get("stream_options").is_none());
    }

    #[test]
    fn long_prompts_differ_per_request_unless_asked_not_to() {
        let target = target_of(&["--prompt-tokens", "100", "--max-tokens", "64", "--stream"]);
        let mut request = target.request.to_vec();
        let mut contents = Vec::new();
        for _ in 0..3 {
            target.next(&mut request);
            let body = body(&request);
            assert_eq!(body["max_tokens"], 64);
            assert_eq!(body["stream_options"]["include_usage"], true);
            contents.push(body["messages"][0]["content"].as_str().unwrap().to_owned());
        }
        assert_eq!(contents[0].split(' ').count(), 101);
        assert_ne!(contents[0], contents[1]);
        assert!(
            contents[1][..21].ends_with("-0000000001]"),
            "{}",
            contents[1]
        );
        assert_eq!(contents[0][21..], contents[2][21..], "only the tag differs");

        let same = target_of(&["--prompt-tokens", "10", "--same-prompt"]);
        let mut request = same.request.to_vec();
        same.next(&mut request);
        assert_eq!(&request[..], &same.request[..]);
    }
}
