"""mgsave: managed-save every libvirt guest at host shutdown, resume it at boot, by policy."""

__version__ = "0.1.1"
