"""The embedded CIFAR-10 subset (see README.md here); read it with pudrt.io.embedded_dataset."""
