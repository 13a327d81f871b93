"""One module per thing a command does (train, pretrain, probe, finetune, segment, OCT, ...)."""
