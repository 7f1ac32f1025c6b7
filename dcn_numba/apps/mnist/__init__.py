"""The scaled-digits experiment: a CNN with or without deformable layers (`models`), its training
command (`train`), the multi-seed tables (`experiment`), the learned receptive field
(`receptive_field`) and its figures (`viz`)."""
