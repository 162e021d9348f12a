"""What `mgsave check` says about the host besides the policy: the libvirt daemon layout, other
shutdown handlers. Each test lays out a fake root the way Debian's packages and systemctl do."""

from pathlib import Path

from libmgsave.conflicts import daemon_layout, host_conflicts

WANTS = "etc/systemd/system/sockets.target.wants"


def enable(root: Path, unit: str) -> None:
    link = root / WANTS / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"/lib/systemd/system/{unit}")


def listening(root: Path, socket: str) -> None:
    path = root / "run/libvirt" / socket
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def test_monolithic_layout_by_its_enabled_socket(tmp_path):
    enable(tmp_path, "libvirtd.socket")
    layout = daemon_layout(str(tmp_path))
    assert layout.kind == "monolithic" and "libvirtd.socket" in str(layout)


def test_modular_layout_by_its_enabled_socket_or_its_running_daemon(tmp_path):
    enable(tmp_path, "virtqemud.socket")
    assert daemon_layout(str(tmp_path)).kind == "modular"
    other = tmp_path / "other"
    listening(other, "virtqemud-sock")
    layout = daemon_layout(str(other))
    assert layout.kind == "modular" and "listening" in layout.evidence


def test_no_daemon_and_both_daemons(tmp_path):
    assert daemon_layout(str(tmp_path)).kind == "unknown"
    enable(tmp_path, "libvirtd.socket")
    enable(tmp_path, "virtqemud.socket")
    assert daemon_layout(str(tmp_path)).kind == "both"
    assert any("both the monolithic and the modular" in w for w in host_conflicts(str(tmp_path)))


def test_daemon_side_shutdown_and_restore_settings_are_warned_about(tmp_path):
    conf = tmp_path / "etc/libvirt/qemu.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text('#auto_shutdown_try_save = "all"\nauto_shutdown_try_save = "persistent"\n'
                    "auto_shutdown_restore = 1\nauto_shutdown_poweroff = \"none\"\n")
    warnings = host_conflicts(str(tmp_path))
    assert any("auto_shutdown_try_save" in w and "when it stops" in w for w in warnings)
    assert any("auto_shutdown_restore" in w and "when it starts" in w for w in warnings)
    assert not any("auto_shutdown_poweroff" in w for w in warnings)


def test_libvirt_guests_enabled_is_warned_about(tmp_path):
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/libvirt-guests.service"
    link.parent.mkdir(parents=True)
    link.symlink_to("/lib/systemd/system/libvirt-guests.service")
    assert any("libvirt-guests.service is enabled" in w for w in host_conflicts(str(tmp_path)))
    assert host_conflicts(str(tmp_path / "empty")) == []
