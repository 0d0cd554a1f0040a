//! The RUDOLPH model family: the text tokenizer, (to come) the transformer and the VQGAN.

pub mod tokenizer;
