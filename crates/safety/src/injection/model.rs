//! The classifier itself: a DeBERTa-v2/v3 sequence classifier on candle and its tokenizer,
//! scoring texts window by window.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::debertav2::DebertaV2SeqClassificationModel;
use tokenizers::{PostProcessor as _, Tokenizer, TruncationDirection};

use super::{
    error::InjectionError,
    files::{self, ModelFiles},
    windows,
};

/// Text the warm-up pass scores.
const WARM_UP_TEXT: &str = "warm-up";

/// How the classifier decides and how much of a long text it reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierOptions {
    /// A text is an injection when the probability of the injection label reaches this.
    pub threshold: f32,
    /// The injection label's name in `id2label` (exact, ignoring case, else the one label
    /// containing it).
    pub label: String,
    /// Most windows scored per text; see [`super::windows`].
    pub max_windows: usize,
    /// Tokens each window shares with the previous one, so that a phrase cut by one window
    /// boundary is whole in the next window; at most half a window.
    pub window_overlap: usize,
    /// Most windows in one forward pass.
    pub max_batch: usize,
}

impl Default for ClassifierOptions {
    /// Threshold 0.5: with two labels, the model's own decision (its argmax, what the
    /// transformers pipeline and the model card report); raise it to trade recall for fewer
    /// false positives. 16 windows of 512 tokens (about 30 KB of English) overlapping by 64.
    fn default() -> Self {
        Self {
            threshold: 0.5,
            label: "INJECTION".to_owned(),
            max_windows: 16,
            window_overlap: 64,
            max_batch: 8,
        }
    }
}

/// The classifier's judgement of one text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextScore {
    /// The highest probability of the injection label over the scored windows.
    pub probability: f32,
    /// Windows scored.
    pub windows: usize,
    /// Windows of a long text left unscored (beyond `max_windows`).
    pub skipped: usize,
}

/// A loaded DeBERTa sequence classifier.
pub struct InjectionClassifier {
    model: DebertaV2SeqClassificationModel,
    /// The model's tokenizer without padding or truncation.
    tokenizer: Tokenizer,
    /// Text tokens per window (`max_length` less the special tokens) and the overlap.
    window: usize,
    stride: usize,
    device: Device,
    labels: Vec<String>,
    injection: usize,
    pad_id: u32,
    max_length: usize,
    options: ClassifierOptions,
    source: PathBuf,
}

impl fmt::Debug for InjectionClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InjectionClassifier")
            .field("source", &self.source)
            .field("labels", &self.labels)
            .field("injection", &self.injection)
            .field("max_length", &self.max_length)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl InjectionClassifier {
    /// Loads the classifier in `dir` onto `device` with the default options but `threshold`.
    pub fn load(dir: &Path, threshold: f32, device: &Device) -> Result<Self, InjectionError> {
        Self::load_with(
            dir,
            ClassifierOptions {
                threshold,
                ..ClassifierOptions::default()
            },
            device,
        )
    }

    /// Loads the classifier in `dir` (config.json with `id2label`, model.safetensors,
    /// tokenizer.json) onto `device`.
    pub fn load_with(
        dir: &Path,
        options: ClassifierOptions,
        device: &Device,
    ) -> Result<Self, InjectionError> {
        if !(0.0..=1.0).contains(&options.threshold) {
            return Err(InjectionError::Option(format!(
                "the threshold must lie in 0..=1, got {}",
                options.threshold
            )));
        }
        if options.max_windows == 0 || options.max_batch == 0 {
            return Err(InjectionError::Option(
                "max_windows and max_batch must be at least 1".to_owned(),
            ));
        }
        if !dir.is_dir() {
            return Err(InjectionError::MissingFile {
                path: dir.to_path_buf(),
            });
        }
        let files = ModelFiles::read(dir)?;
        let injection = files::find_label(&files.labels, &options.label, &files.config_path)?;
        let Windowing {
            tokenizer,
            pad_id,
            window,
            stride,
        } = tokenizer(&files, &options)?;
        let weights_error = |err: candle_core::Error| InjectionError::Weights {
            path: files.weights[0].clone(),
            reason: err.to_string(),
        };
        let vb =
            passerelle_model_runtime::weights::mmap_safetensors(&files.weights, DType::F32, device)
                .map_err(weights_error)?;
        // Checkpoints saved from `DebertaV2ForSequenceClassification` keep the encoder under
        // `deberta.`, the pooler and classifier at the root.
        let model = DebertaV2SeqClassificationModel::load(vb.pp("deberta"), &files.config, None)
            .map_err(weights_error)?;
        Ok(Self {
            model,
            tokenizer,
            window,
            stride,
            device: device.clone(),
            labels: files.labels,
            injection,
            pad_id,
            max_length: files.max_length,
            options,
            source: dir.to_path_buf(),
        })
    }

    /// The label names, by class index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// The class index of the injection label.
    pub fn injection_label(&self) -> usize {
        self.injection
    }

    /// Window length in tokens, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn options(&self) -> &ClassifierOptions {
        &self.options
    }

    /// The directory the model was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Whether `score` is at or over the threshold.
    pub fn is_injection(&self, score: &TextScore) -> bool {
        score.probability >= self.options.threshold
    }

    /// Scores one short text so the first check pays no first-run cost.
    pub fn warm_up(&self) -> Result<(), InjectionError> {
        self.score(&[WARM_UP_TEXT])
            .map(drop)
            .map_err(|err| InjectionError::WarmUp(err.to_string()))
    }

    /// The token ids of every window of `text`, special tokens included, in order.
    ///
    /// The text is tokenized whole and cut here: the tokenizer's own truncation stops reading
    /// at the first window, so its overflow would not cover the text.
    pub fn windows(&self, text: &str) -> Result<Vec<Vec<u32>>, InjectionError> {
        let tokenize = |err: tokenizers::Error| InjectionError::Tokenize(err.to_string());
        let mut encoding = self.tokenizer.encode(text, false).map_err(tokenize)?;
        encoding.truncate(self.window, self.stride, TruncationDirection::Right);
        let overflowing = encoding.take_overflowing();
        std::iter::once(encoding)
            .chain(overflowing)
            .map(|part| {
                let window = self
                    .tokenizer
                    .post_process(part, None, true)
                    .map_err(tokenize)?;
                Ok(window.get_ids().to_vec())
            })
            .collect()
    }

    /// The logits of each input, run as batches padded on the right under an attention mask.
    pub fn logits(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, InjectionError> {
        let mut out = Vec::with_capacity(inputs.len());
        for batch in inputs.chunks(self.options.max_batch) {
            out.extend(self.forward(batch)?);
        }
        Ok(out)
    }

    fn forward(&self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, InjectionError> {
        let rows = batch.len();
        let seq_len = batch.iter().map(Vec::len).max().unwrap_or(0);
        if rows == 0 || seq_len == 0 {
            return Ok(vec![Vec::new(); rows]);
        }
        let mut ids = Vec::with_capacity(rows * seq_len);
        let mut mask = Vec::with_capacity(rows * seq_len);
        for input in batch {
            let padding = seq_len - input.len();
            ids.extend(input);
            ids.extend(std::iter::repeat_n(self.pad_id, padding));
            mask.extend(std::iter::repeat_n(1u32, input.len()));
            mask.extend(std::iter::repeat_n(0u32, padding));
        }
        let ids = Tensor::from_vec(ids, (rows, seq_len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, seq_len), &self.device)?;
        let logits = self.model.forward(&ids, None, Some(mask))?;
        Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }

    /// Scores `texts`: each window of each text (up to `max_windows` per text), in shared
    /// forward passes, and each text's most suspicious window.
    pub fn score(&self, texts: &[&str]) -> Result<Vec<TextScore>, InjectionError> {
        let mut scores = Vec::with_capacity(texts.len());
        let mut owners = Vec::new();
        let mut inputs = Vec::new();
        for (index, text) in texts.iter().enumerate() {
            let mut all = self.windows(text)?;
            let chosen = windows::chosen(all.len(), self.options.max_windows);
            scores.push(TextScore {
                probability: 0.0,
                windows: chosen.len(),
                skipped: all.len() - chosen.len(),
            });
            for window in chosen {
                owners.push(index);
                inputs.push(std::mem::take(&mut all[window]));
            }
        }
        for (owner, logits) in owners.into_iter().zip(self.logits(&inputs)?) {
            let probability = softmax(&logits).get(self.injection).copied().unwrap_or(0.0);
            let score = &mut scores[owner];
            score.probability = score.probability.max(probability);
        }
        Ok(scores)
    }
}

/// The model's tokenizer, padding and truncation off, and how texts are cut for it.
struct Windowing {
    tokenizer: Tokenizer,
    /// The id padding positions carry.
    pad_id: u32,
    window: usize,
    stride: usize,
}

fn tokenizer(files: &ModelFiles, options: &ClassifierOptions) -> Result<Windowing, InjectionError> {
    let error = |reason: String| InjectionError::Tokenizer {
        path: files.tokenizer.clone(),
        reason,
    };
    let mut tokenizer = Tokenizer::from_file(&files.tokenizer).map_err(|e| error(e.to_string()))?;
    let default_pad = files
        .config
        .pad_token_id
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or(0);
    let pad_id = tokenizer
        .get_padding()
        .map_or(default_pad, |padding| padding.pad_id);
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| error(e.to_string()))?;
    let special = tokenizer
        .get_post_processor()
        .map_or(0, |processor| processor.added_tokens(false));
    if files.max_length <= special {
        return Err(error(format!(
            "a window of {} tokens has no room for text after {special} special tokens",
            files.max_length
        )));
    }
    let window = files.max_length - special;
    // Cutting asserts that a window is longer than the overlap; a small model's windows
    // overlap by half at most.
    let stride = options.window_overlap.min(window / 2);
    Ok(Windowing {
        tokenizer,
        pad_id,
        window,
        stride,
    })
}

/// Softmax of `logits`, shifted by the largest for stability.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let probs = softmax(&[1000.0, 1000.0]);
        assert!((probs[0] - 0.5).abs() < 1e-6 && (probs[1] - 0.5).abs() < 1e-6);
        let probs = softmax(&[0.0, 2.0_f32.ln()]);
        assert!((probs[1] - 2.0 / 3.0).abs() < 1e-6);
    }
}
