//! Rendering a conversation with the model's own Jinja chat template, the way Hugging Face
//! `transformers` does (`apply_chat_template`): `trim_blocks` and `lstrip_blocks`, loop controls,
//! Python string methods, `raise_exception`, `strftime_now` and a `tojson` that writes what
//! Python's `json.dumps` writes. No prompt format is written by hand here.

use std::fmt::Write as _;

use minijinja::{Environment, Error, ErrorKind, Value, value::Kwargs};

use crate::request::{ChatMessage, ChatPrompt, ToolSpec};

const TEMPLATE_NAME: &str = "chat_template";

/// Why a conversation could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template refused the conversation (`raise_exception`) or failed on it.
    #[error("chat template: {0}")]
    Render(String),
    #[error("tool `{name}`: parameters are not valid JSON: {reason}")]
    ToolParameters { name: String, reason: String },
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    supports_tools: bool,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts templates see under those names
    /// (left undefined when the model has none, as `transformers` does).
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self, Error> {
        let source = source.into();
        // Templates that never mention tools would silently drop them.
        let supports_tools = source.contains("tools");
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        if let Some(bos) = bos_token {
            env.add_global("bos_token", bos);
        }
        if let Some(eos) = eos_token {
            env.add_global("eos_token", eos);
        }
        env.add_template_owned(TEMPLATE_NAME, source)?;
        Ok(Self {
            env,
            supports_tools,
        })
    }

    /// Whether the template renders a `tools` list.
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// Renders `chat` to the prompt text.
    pub fn render(&self, chat: &ChatPrompt) -> Result<String, TemplateError> {
        let messages: Vec<Value> = chat.messages.iter().map(message_value).collect();
        let tools = chat
            .tools
            .iter()
            .map(tool_value)
            .collect::<Result<Vec<_>, _>>()?;
        let template = self.env.get_template(TEMPLATE_NAME).map_err(render_error)?;
        let mut ctx = vec![
            ("messages", Value::from(messages)),
            (
                "add_generation_prompt",
                Value::from(chat.add_generation_prompt),
            ),
        ];
        // `transformers` passes `tools=None` when there are none, and templates test `if tools`.
        ctx.push((
            "tools",
            if tools.is_empty() {
                Value::from(())
            } else {
                Value::from(tools)
            },
        ));
        template.render(Value::from_iter(ctx)).map_err(render_error)
    }
}

fn render_error(err: Error) -> TemplateError {
    // `raise_exception` messages are meant for the caller as they are.
    let message = match (err.kind(), err.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_owned(),
        _ => err.to_string(),
    };
    TemplateError::Render(message)
}

/// A message as templates expect it: `role` and `content`, plus the optional fields when set.
fn message_value(message: &ChatMessage) -> Value {
    let mut fields = vec![
        ("role", Value::from(message.role.as_str())),
        ("content", Value::from(message.content.as_str())),
    ];
    if let Some(name) = &message.name {
        fields.push(("name", Value::from(name.as_str())));
    }
    if let Some(id) = &message.tool_call_id {
        fields.push(("tool_call_id", Value::from(id.as_str())));
    }
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|call| {
                // Templates print arguments with `tojson`, expecting an object, as vLLM passes
                // them; text that is not JSON is passed through as a string.
                let arguments = serde_json::from_str::<Value>(&call.arguments_json)
                    .unwrap_or_else(|_| Value::from(call.arguments_json.as_str()));
                let function = Value::from_iter([
                    ("name", Value::from(call.name.as_str())),
                    ("arguments", arguments),
                ]);
                Value::from_iter([
                    ("id", Value::from(call.id.as_str())),
                    ("type", Value::from("function")),
                    ("function", function),
                ])
            })
            .collect();
        fields.push(("tool_calls", Value::from(calls)));
    }
    Value::from_iter(fields)
}

/// A tool in OpenAI's shape, `{"type": "function", "function": {...}}`, which is what
/// templates serialise.
fn tool_value(tool: &ToolSpec) -> Result<Value, TemplateError> {
    let mut function = vec![("name", Value::from(tool.name.as_str()))];
    if !tool.description.is_empty() {
        function.push(("description", Value::from(tool.description.as_str())));
    }
    if !tool.parameters_json.trim().is_empty() {
        let parameters = serde_json::from_str::<Value>(&tool.parameters_json).map_err(|e| {
            TemplateError::ToolParameters {
                name: tool.name.clone(),
                reason: e.to_string(),
            }
        })?;
        function.push(("parameters", parameters));
    }
    Ok(Value::from_iter([
        ("type", Value::from("function")),
        ("function", Value::from_iter(function)),
    ]))
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// The current time (UTC: servers run in UTC and it keeps the output reproducible across hosts)
/// formatted with a C `strftime` format.
fn strftime_now(format: String) -> Result<Value, Error> {
    let mut out = String::new();
    write!(out, "{}", chrono::Utc::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("invalid strftime format `{format}`"),
        )
    })?;
    Ok(Value::from(out))
}

/// `tojson` as `transformers` defines it: `json.dumps(value, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)`, so `", "` and `": "` separators and non-ASCII text as is.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let style = JsonStyle {
        indent,
        sort_keys: sort_keys.unwrap_or(false),
        ensure_ascii: ensure_ascii.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from(out))
}

struct JsonStyle {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> Result<(), Error> {
    use minijinja::value::ValueKind;
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => {
            write_string(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, ('[', ']'), items.len(), style, depth, |out, i| {
                write_json(out, &items[i], style, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if style.sort_keys {
                keys.sort_by_key(|k| k.to_string());
            }
            write_container(out, ('{', '}'), keys.len(), style, depth, |out, i| {
                write_string(out, &keys[i].to_string(), style.ensure_ascii);
                out.push_str(": ");
                write_json(out, &value.get_item(&keys[i])?, style, depth + 1)
            })?;
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("{} is not JSON serializable", value.kind()),
            ));
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    (open, close): (char, char),
    len: usize,
    style: &JsonStyle,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        match style.indent {
            // Python uses "," between items when indenting, ", " otherwise.
            Some(width) => {
                if i > 0 {
                    out.push(',');
                }
                out.push('\n');
                out.push_str(&" ".repeat(width * (depth + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        item(out, i)?;
    }
    if let Some(width) = style.indent {
        out.push('\n');
        out.push_str(&" ".repeat(width * depth));
    }
    out.push(close);
    Ok(())
}

fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    let float: f64 = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if float.is_nan() {
        out.push_str("NaN");
    } else if float.is_infinite() {
        out.push_str(if float > 0.0 { "Infinity" } else { "-Infinity" });
    } else if float.fract() == 0.0 && float.abs() < 1e16 {
        // Python's repr keeps the ".0" of whole floats.
        let _ = write!(out, "{float:.1}");
    } else {
        let _ = write!(out, "{float}");
    }
}

fn write_string(out: &mut String, text: &str, ensure_ascii: bool) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(source: &str, chat: &ChatPrompt) -> Result<String, TemplateError> {
        ChatTemplate::new(source, Some("<s>".into()), None)
            .unwrap()
            .render(chat)
    }

    fn user(text: &str) -> ChatPrompt {
        ChatPrompt {
            messages: vec![ChatMessage::new("user", text)],
            ..ChatPrompt::default()
        }
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let source = "{% for m in messages %}\n  {{ m.role }}: {{ m.content }}\n{% endfor %}";
        assert_eq!(render(source, &user("hi")).unwrap(), "  user: hi\n");
    }

    #[test]
    fn python_string_methods_and_globals_work() {
        let source =
            "{{ bos_token }}{{ messages[0].content.strip().upper() }}{{ eos_token is defined }}";
        assert_eq!(
            render(source, &user("  hi ")).unwrap(),
            "<s>HIFalse",
            "booleans print as Jinja2 prints them"
        );
    }

    #[test]
    fn raise_exception_reaches_the_caller_verbatim() {
        let source = "{{ raise_exception('System role not supported') }}";
        let err = render(source, &user("x")).unwrap_err();
        assert_eq!(err.to_string(), "chat template: System role not supported");
    }

    #[test]
    fn tojson_writes_what_python_json_dumps_writes() {
        let value: Value =
            serde_json::from_str(r#"{"b": [1, 2.0, "é\n"], "a": {"x": null, "y": true}}"#).unwrap();
        let mut out = String::new();
        let style = JsonStyle {
            indent: None,
            sort_keys: false,
            ensure_ascii: false,
        };
        write_json(&mut out, &value, &style, 0).unwrap();
        assert_eq!(
            out,
            r#"{"b": [1, 2.0, "é\n"], "a": {"x": null, "y": true}}"#
        );
        let mut out = String::new();
        let style = JsonStyle {
            indent: Some(2),
            sort_keys: true,
            ensure_ascii: true,
        };
        write_json(&mut out, &value, &style, 0).unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": {\n    \"x\": null,\n    \"y\": true\n  },\n  \"b\": [\n    1,\n    2.0,\n    \"\\u00e9\\n\"\n  ]\n}"
        );
    }

    #[test]
    fn strftime_now_formats_today() {
        let out = render("{{ strftime_now('%Y') }}", &user("x")).unwrap();
        assert_eq!(out.len(), 4);
        assert!(out.starts_with("20"));
        let err = render("{{ strftime_now('%Q') }}", &user("x")).unwrap_err();
        assert!(err.to_string().contains("invalid strftime format"), "{err}");
    }

    #[test]
    fn tools_are_none_when_absent_and_support_is_detected() {
        let t = ChatTemplate::new("{{ tools is none }}", None, None).unwrap();
        assert!(t.supports_tools());
        assert_eq!(t.render(&user("x")).unwrap(), "True");
        assert!(
            !ChatTemplate::new("{{ messages }}", None, None)
                .unwrap()
                .supports_tools()
        );
    }
}
