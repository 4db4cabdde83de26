"""Signal propagation statistics and plots."""

from nf.signal.spp import check_finite, compute_spp, load_images, plot_spp, set_skip_gains
from nf.signal.stats import STAT_NAMES, signal_stats

__all__ = ["STAT_NAMES", "check_finite", "compute_spp", "load_images", "plot_spp", "set_skip_gains", "signal_stats"]
