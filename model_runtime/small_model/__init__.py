"""The small MolmoE-architecture model trained here on the VQA task suite (torch).

- :mod:`.tokenizer_training`: a byte-level BPE tokenizer trained on the suite's text.
- :mod:`.training_data`: training batches rendered on the fly in data-loader workers.
- :mod:`.trainer`: the training loop (hyperparameters in one dataclass, resumable).

``python -m experiments.train_model`` is the command line. The model's configuration is
:meth:`model_runtime.molmoe.config.MolmoeConfig.small`.
"""
