//! RUDOLPH hyper-parameters, under the reference's `model_params` names.

use serde::{Deserialize, Serialize};

/// The transformer's shape. Field names are those of rudolph's `MODELS[...]['model_params']`,
/// so a reference config deserialises as it is; unknown names are rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RudolphConfig {
    pub num_layers: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub l_text_seq_length: usize,
    pub image_tokens_per_dim: usize,
    pub r_text_seq_length: usize,
    #[serde(default = "default_kernel")]
    pub kernel_size: usize,
    #[serde(default = "default_last_kernel")]
    pub last_kernel_size: usize,
    /// Text ids, BPE vocabulary plus the l_text pad-position ids (16384 + 64 for 350M).
    pub vocab_size: usize,
    pub image_vocab_size: usize,
    /// rc10 checkpoints add special tokens to both vocabularies.
    #[serde(default)]
    pub text_special_tokens: usize,
    #[serde(default)]
    pub image_special_tokens: usize,
    #[serde(default = "yes")]
    pub cogview_sandwich_layernorm: bool,
    #[serde(default = "yes")]
    pub cogview_pb_relax: bool,
    /// Reference options we accept only at their 350M values (checked by [`RudolphConfig::validate`]).
    #[serde(default)]
    pub cogview_layernorm_prescale: bool,
    #[serde(default)]
    pub custom_relax: bool,
    #[serde(default = "default_activation")]
    pub mlp_activation: String,
    #[serde(default = "yes")]
    pub is_bool_mask: bool,
    /// Dropout while training (embeddings, attention probabilities, attention and MLP
    /// outputs), as the reference trains; `borscht train` applies them unless `--dropout`
    /// overrides, and inference never does.
    #[serde(default = "default_dropout")]
    pub embedding_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub output_dropout_prob: f64,
    #[serde(default = "default_eps")]
    pub layernorm_epsilon: f64,
}

fn default_kernel() -> usize {
    7
}
fn default_last_kernel() -> usize {
    9
}
fn yes() -> bool {
    true
}
fn default_activation() -> String {
    "gelu_jit".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-5
}

impl RudolphConfig {
    fn base(num_layers: usize, hidden_size: usize, heads: usize, l: usize, t: usize, r: usize) -> Self {
        RudolphConfig {
            num_layers,
            hidden_size,
            num_attention_heads: heads,
            l_text_seq_length: l,
            image_tokens_per_dim: t,
            r_text_seq_length: r,
            kernel_size: 7,
            last_kernel_size: 9,
            vocab_size: 16384 + l,
            image_vocab_size: 8192,
            text_special_tokens: 0,
            image_special_tokens: 0,
            cogview_sandwich_layernorm: true,
            cogview_pb_relax: true,
            cogview_layernorm_prescale: false,
            custom_relax: false,
            mlp_activation: default_activation(),
            is_bool_mask: true,
            embedding_dropout_prob: 0.1,
            attention_dropout_prob: 0.1,
            output_dropout_prob: 0.1,
            layernorm_epsilon: 1e-5,
        }
    }

    /// RuDOLPH-350M v1 (`sberbank-ai/RuDOLPH-350M`, rudolph 0.0.1rc4): the article's model.
    pub fn rudolph_350m() -> Self {
        Self::base(24, 1024, 16, 64, 16, 64)
    }

    /// RuDOLPH-350M v2 (`shonenkov-AI/RuDOLPH-350M-v2`, rc10): 384 text + 384 image special tokens.
    pub fn rudolph_350m_v2() -> Self {
        RudolphConfig { text_special_tokens: 384, image_special_tokens: 384, ..Self::rudolph_350m() }
    }

    /// RUDOLPH-1.3B (rc10).
    pub fn rudolph_1_3b() -> Self {
        RudolphConfig {
            kernel_size: 9,
            last_kernel_size: 11,
            text_special_tokens: 2048,
            image_special_tokens: 64,
            ..Self::base(24, 2048, 16, 128, 32, 128)
        }
    }

    /// RUDOLPH-2.7B (rc10).
    pub fn rudolph_2_7b() -> Self {
        RudolphConfig {
            text_special_tokens: 1024,
            image_special_tokens: 1024,
            ..Self::base(32, 2560, 32, 384, 24, 128)
        }
    }

    /// A preset by name: `350M`, `350M-v2`, `1.3B`, `2.7B`.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "350M" | "350M_v1" => Some(Self::rudolph_350m()),
            "350M-v2" | "350M_v2" => Some(Self::rudolph_350m_v2()),
            "1.3B" => Some(Self::rudolph_1_3b()),
            "2.7B" => Some(Self::rudolph_2_7b()),
            _ => None,
        }
    }

    pub const PRESETS: &'static [&'static str] = &["350M", "350M-v2", "1.3B", "2.7B"];

    /// The preset of an official hub repository, which ships weights without a config.
    pub fn for_hub_repo(repo: &str) -> Option<Self> {
        match repo.to_ascii_lowercase().as_str() {
            "sberbank-ai/rudolph-350m" => Some(Self::rudolph_350m()),
            "shonenkov-ai/rudolph-350m-v2" => Some(Self::rudolph_350m_v2()),
            "sberbank-ai/rudolph-1.3b" => Some(Self::rudolph_1_3b()),
            "sberbank-ai/rudolph-2.7b" | "sberbank-ai/rudolph-2.7b-fbc2" => Some(Self::rudolph_2_7b()),
            _ => None,
        }
    }

    /// Text ids the embedding and the logits cover (special tokens included).
    pub fn text_vocab(&self) -> usize {
        self.vocab_size + self.text_special_tokens
    }

    pub fn image_vocab(&self) -> usize {
        self.image_vocab_size + self.image_special_tokens
    }

    pub fn total_vocab(&self) -> usize {
        self.text_vocab() + self.image_vocab()
    }

    pub fn image_seq_length(&self) -> usize {
        self.image_tokens_per_dim * self.image_tokens_per_dim
    }

    pub fn total_seq_length(&self) -> usize {
        self.l_text_seq_length + self.image_seq_length() + self.r_text_seq_length
    }

    /// The segment a position lies in: 0 l_text, 1 image, 2 r_text.
    pub fn segment_of(&self, position: usize) -> usize {
        if position < self.l_text_seq_length {
            0
        } else if position < self.l_text_seq_length + self.image_seq_length() {
            1
        } else {
            2
        }
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Rejects shapes and options the port (like the reference) cannot run.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.num_layers == 0 || self.hidden_size == 0 || self.num_attention_heads == 0 {
            problems.push("num_layers, hidden_size and num_attention_heads must be positive".to_string());
        } else if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            problems.push(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.l_text_seq_length == 0 || self.r_text_seq_length < 2 || self.image_tokens_per_dim == 0 {
            problems
                .push("l_text_seq_length ≥ 1, r_text_seq_length ≥ 2 and image_tokens_per_dim ≥ 1 are needed".into());
        }
        // rudolph 0.0.1rc4 builds the conv masks with l_text_seq_length in place of
        // r_text_seq_length; they only cover the sequence when r ≤ l.
        if self.r_text_seq_length > self.l_text_seq_length {
            problems.push(format!(
                "r_text_seq_length {} > l_text_seq_length {}: the reference's conv masks do not cover such a sequence",
                self.r_text_seq_length, self.l_text_seq_length
            ));
        }
        if self.vocab_size < self.l_text_seq_length {
            problems.push("vocab_size must include the l_text pad-position ids".into());
        }
        // The l_text loss makes the last left-text position predict the first image
        // code with text logits, so every image code must also be a text id.
        if self.vocab_size < self.image_vocab_size {
            problems.push(format!(
                "vocab_size {} < image_vocab_size {}: the l_text loss targets the first image code with text logits",
                self.vocab_size, self.image_vocab_size
            ));
        }
        if self.custom_relax || self.cogview_layernorm_prescale {
            problems
                .push("custom_relax and cogview_layernorm_prescale are not supported (no RUDOLPH uses them)".into());
        }
        if self.mlp_activation != "gelu_jit" && self.mlp_activation != "gelu" {
            problems.push(format!("mlp_activation {:?} is not implemented (gelu, gelu_jit)", self.mlp_activation));
        }
        if self.kernel_size.is_multiple_of(2) || self.last_kernel_size.is_multiple_of(2) {
            problems.push("kernel sizes must be odd".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_350m_preset_matches_the_reference_numbers() {
        let c = RudolphConfig::rudolph_350m();
        assert_eq!(c.text_vocab(), 16448);
        assert_eq!(c.total_vocab(), 24640);
        assert_eq!(c.total_seq_length(), 384);
        assert_eq!(c.head_dim(), 64);
        c.validate().unwrap();
        let v2 = RudolphConfig::rudolph_350m_v2();
        assert_eq!(v2.text_vocab(), 16448 + 384);
        assert_eq!(v2.image_vocab(), 8192 + 384);
    }

    #[test]
    fn reference_model_params_deserialise() {
        let json = r#"{"num_layers": 24, "hidden_size": 1024, "num_attention_heads": 16,
            "embedding_dropout_prob": 0.1, "output_dropout_prob": 0.1, "attention_dropout_prob": 0.1,
            "l_text_seq_length": 64, "image_tokens_per_dim": 16, "r_text_seq_length": 64,
            "kernel_size": 7, "last_kernel_size": 9, "cogview_sandwich_layernorm": true,
            "cogview_pb_relax": true, "vocab_size": 16448, "image_vocab_size": 8192}"#;
        let c: RudolphConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c, RudolphConfig::rudolph_350m());
        assert!(serde_json::from_str::<RudolphConfig>(&json.replace("\"num_layers\"", "\"layers\"")).is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = RudolphConfig { hidden_size: 1000, ..RudolphConfig::rudolph_350m() };
        assert!(bad.validate().unwrap_err().contains("not divisible"));
        let bad = RudolphConfig { r_text_seq_length: 65, ..RudolphConfig::rudolph_350m() };
        assert!(bad.validate().unwrap_err().contains("conv masks"));
        for name in RudolphConfig::PRESETS {
            RudolphConfig::preset(name).unwrap().validate().unwrap();
        }
    }
}
