"""A masked-LM checkpoint with SPLADE max pooling for training, its gradient computed without [tokens x vocabulary]
autograd logits (see :mod:`lsr.training`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


class SpladeModel:
    """A masked-LM checkpoint with SPLADE pooling for training (see :mod:`lsr.training` for the fast max-pool)."""

    def __init__(self, path: str | os.PathLike, device: str, tokenizer_path: str | os.PathLike | None = None):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.torch = torch
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path))
        self.model = AutoModelForMaskedLM.from_pretrained(str(path)).to(device)
        self.decoder = self.model.get_output_embeddings()
        self.vocab_size = int(self.decoder.out_features if hasattr(self.decoder, "out_features")
                              else self.decoder.weight.shape[0])
        self.head = getattr(self.model, "cls", None) or getattr(self.model, "lm_head", None)
        self.fast = self.head is not None and isinstance(self.decoder, torch.nn.Linear)
        self._captured = None
        self._hook = self.decoder.register_forward_hook(self._capture) if self.fast else None

    def _capture(self, module, inputs, output):
        self._captured = inputs[0]
        return output.detach()

    def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        return self.tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                              return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def encode(self, ids: list[list[int]]):
        """SPLADE vectors [len(ids), vocab] (autograd through the model) of token-id lists."""
        torch = self.torch
        padded = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        input_ids = padded["input_ids"].to(self.device)
        mask = padded["attention_mask"].to(self.device)
        if not self.fast:
            logits = self.model(input_ids=input_ids, attention_mask=mask).logits
            pooled = logits.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)
            return torch.log1p(torch.relu(pooled))
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        weight, bias = self.decoder.weight, self.decoder.bias
        rows = []
        for i, n in enumerate(mask.sum(dim=1).tolist()):
            logits = self.head(hidden[i, :n])  # full logits without autograd (the hook detaches them)
            x = self._captured  # the decoder's input, with autograd
            values, where = logits.max(dim=0)
            nz = torch.nonzero(values > 0).squeeze(1)
            pooled = (x[where[nz]] * weight[nz]).sum(-1)
            if bias is not None:
                pooled = pooled + bias[nz]
            row = torch.zeros(self.vocab_size, device=self.device, dtype=pooled.dtype)
            rows.append(row.scatter(0, nz, torch.log1p(torch.relu(pooled))))
        self._captured = None
        return torch.stack(rows)

    def save(self, out: Path) -> None:
        self.model.save_pretrained(str(out))
        self.tokenizer.save_pretrained(str(out))
