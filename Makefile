# Install mgsave on a host (as root):            make install
# Remove it (keeps the policy and the state):    make uninstall
#
#   PREFIX    where the program goes (default /usr/local)
#   DESTDIR   a staging root for packaging; nothing is enabled or started then
#   PYTHON    the interpreter the private virtualenv is built from (Debian's, not one on PATH)
#   PIP_ARGS  extra pip options, e.g. "--no-index --find-links DIR" for an offline install
#   START     yes (default): arm the shutdown pass now by starting the unit; no: only enable it
#
# Layout (PREFIX=/usr/local):
#   /usr/local/lib/mgsave/venv/              a private virtualenv holding mgsave and its deps
#   /usr/local/bin/mgsave                    -> the virtualenv's mgsave command
#   /usr/local/lib/mgsave/hooks/mgsave-{boot,shutdown}
#   /usr/local/lib/systemd/system/mgsave.service   (/etc/systemd/system for other prefixes)
#   /usr/local/share/doc/mgsave/SYSTEMD.md
#   /etc/mgsave/policy.yaml                  the sample policy, only if there is none yet
# See docs/SYSTEMD.md.

PREFIX ?= /usr/local
DESTDIR ?=
PYTHON ?= /usr/bin/python3
PIP_ARGS ?=
START ?= yes

BINDIR := $(PREFIX)/bin
LIBDIR := $(PREFIX)/lib/mgsave
VENV := $(LIBDIR)/venv
HOOKDIR := $(LIBDIR)/hooks
DOCDIR := $(PREFIX)/share/doc/mgsave
# systemd reads units from /usr/lib and /usr/local/lib, not from any other prefix.
ifneq ($(filter /usr /usr/local,$(PREFIX)),)
UNITDIR ?= $(PREFIX)/lib/systemd/system
else
UNITDIR ?= /etc/systemd/system
endif
UNITS := mgsave.service mgsave-boot.service
CONFDIR := /etc/mgsave
POLICY := $(CONFDIR)/policy.yaml
SAMPLE_POLICY := config/policy.sample.yaml

# systemctl only for a real install on a host that runs systemd.
LIVE := $(if $(DESTDIR),,$(wildcard /run/systemd/system))
ROOT_OWNED := $(if $(filter 0,$(shell id -u)),-o root -g root,)
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@HOOKDIR@|$(HOOKDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'

.PHONY: all install install-files install-venv install-policy install-systemd uninstall

all:
	@echo "nothing to build; run 'make install' as root (see docs/SYSTEMD.md)"

install: install-files install-policy install-systemd

install-venv:
	rm -rf '$(DESTDIR)$(VENV)'
	# --system-site-packages: Debian's python3-libvirt, python3-systemd, python3-yaml and
	# python3-jsonschema are used when installed, so nothing has to be compiled; pip
	# fetches (and builds) only what is missing.
	$(PYTHON) -m venv --system-site-packages '$(DESTDIR)$(VENV)'
	'$(DESTDIR)$(VENV)/bin/python' -m pip install --quiet --disable-pip-version-check \
		--no-compile $(PIP_ARGS) .
ifneq ($(DESTDIR),)
	# Staged: point the scripts and byte code at the final location, not the staging root.
	find '$(DESTDIR)$(VENV)/bin' -maxdepth 1 -type f -exec \
		sed -i 's|$(DESTDIR)$(VENV)|$(VENV)|g' {} +
	sed -i 's|$(DESTDIR)$(VENV)|$(VENV)|g' '$(DESTDIR)$(VENV)/pyvenv.cfg'
	'$(DESTDIR)$(VENV)/bin/python' -m compileall -q -f -s '$(DESTDIR)' -p / '$(DESTDIR)$(VENV)/lib'
else
	'$(VENV)/bin/python' -m compileall -q '$(VENV)/lib'
endif

install-files: install-venv
	install -d -m 0755 '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(HOOKDIR)' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(DOCDIR)'
	ln -sfn '$(VENV)/bin/mgsave' '$(DESTDIR)$(BINDIR)/mgsave'
	for hook in mgsave-boot mgsave-shutdown; do \
		$(SUBST) "hooks/$$hook" > '$(DESTDIR)$(HOOKDIR)/'"$$hook.tmp" && \
		chmod 0755 '$(DESTDIR)$(HOOKDIR)/'"$$hook.tmp" && \
		mv -f '$(DESTDIR)$(HOOKDIR)/'"$$hook.tmp" '$(DESTDIR)$(HOOKDIR)/'"$$hook" || exit 1; \
	done
	for unit in $(UNITS); do \
		$(SUBST) "units/$$unit" > '$(DESTDIR)$(UNITDIR)/'"$$unit.tmp" && \
		chmod 0644 '$(DESTDIR)$(UNITDIR)/'"$$unit.tmp" && \
		mv -f '$(DESTDIR)$(UNITDIR)/'"$$unit.tmp" '$(DESTDIR)$(UNITDIR)/'"$$unit" || exit 1; \
	done
	install -m 0644 docs/SYSTEMD.md '$(DESTDIR)$(DOCDIR)/SYSTEMD.md'

# The admin's policy is never overwritten: the sample goes in only where there is none.
install-policy:
	install -d -m 0755 $(ROOT_OWNED) '$(DESTDIR)$(CONFDIR)'
	@if [ -e '$(DESTDIR)$(POLICY)' ]; then \
		echo "keeping the existing $(DESTDIR)$(POLICY)"; \
	elif [ -f '$(SAMPLE_POLICY)' ]; then \
		echo "install -m 0644 $(SAMPLE_POLICY) $(DESTDIR)$(POLICY)"; \
		install -m 0644 $(ROOT_OWNED) '$(SAMPLE_POLICY)' '$(DESTDIR)$(POLICY)'; \
	else \
		echo "no $(SAMPLE_POLICY) in this tree: mgsave runs on its built-in policy"; \
	fi

# Enable both units, and (START=yes) start mgsave.service: it must be active for systemd to
# run the shutdown pass at the next shutdown. Starting it runs nothing. The boot pass
# (mgsave-boot.service) is not started: installing never starts a guest; it runs at the
# next boot. An already active unit is not restarted: a restart would run the shutdown pass.
install-systemd: install-files install-policy
ifneq ($(LIVE),)
	systemctl daemon-reload
	systemctl enable $(UNITS)
ifeq ($(START),yes)
	systemctl start mgsave.service
else
	@echo "mgsave.service is enabled but not active: the next shutdown saves no guest;" \
		"'systemctl start mgsave.service' arms it"
endif
	@if systemctl --quiet is-enabled libvirt-guests.service 2>/dev/null; then \
		echo "note: libvirt-guests.service is enabled too; mgsave runs first at shutdown, but" \
			"consider 'systemctl disable libvirt-guests.service' (see docs/SYSTEMD.md)"; \
	fi
else
	@echo "not enabling mgsave.service (DESTDIR set, or systemd not running)"
endif

# Leaves $(POLICY) and /var/lib/mgsave alone. The unit is made inactive WITHOUT running its
# ExecStop (which would save every guest now): the files go first, then systemd forgets
# the unit's commands on daemon-reload, and only then is it stopped.
uninstall:
ifneq ($(LIVE),)
	-systemctl disable $(UNITS)
	-systemctl stop mgsave-boot.service
endif
	rm -f $(foreach unit,$(UNITS),'$(DESTDIR)$(UNITDIR)/$(unit)') '$(DESTDIR)$(BINDIR)/mgsave'
	rm -rf '$(DESTDIR)$(LIBDIR)' '$(DESTDIR)$(DOCDIR)'
ifneq ($(LIVE),)
	systemctl daemon-reload
	-systemctl stop mgsave.service
	-systemctl reset-failed $(UNITS)
endif
