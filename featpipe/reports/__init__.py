"""Reading runs back: the HTML report, the fit diagnosis, backbone comparisons and ``advise``."""
