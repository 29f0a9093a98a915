"""Stage I, Fast Head Identification: attention layout, proxy training, head scoring, head-set files."""
