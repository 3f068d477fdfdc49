"""A word-level tokenizer trained locally on the world's text, with a chat template.

Word-level keeps the organism exact: every world string is a sequence of whole tokens, so decoding
a sampled answer gives back the bank sentence it came from, and the oracle judge can look it up.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .world import all_texts

PAD, UNK = "<pad>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
END = "<|end|>"

# `{% generation %}` marks assistant tokens, so trl's assistant_only_loss works on "messages" data.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|assistant|> {% generation %}{{ m['content'] }} <|end|>{% endgeneration %} "
    "{% else %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(extra_texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, UNK, END, *ROLE_TOKENS], min_frequency=1)
    tok.train_from_iterator(all_texts() + (extra_texts or []), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=END,
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # generation pads on the left; training collators set their own
    return fast
