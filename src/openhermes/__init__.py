"""openhermes: reproduce OpenHermes 2.5 and LimaRP Mistral 7B end to end."""

__version__ = "0.1.0"
