# Install mgsave on a host (as root):            make install
# Remove it (keeps the policy and the state):    make uninstall
# Build the Debian package (Debian 12 or 13):    make deb    -> dist/mgsave_<version>_all.deb
# On Debian, prefer the package: apt install ./dist/mgsave_<version>_all.deb
#
#   PREFIX      where the program goes (default /usr/local)
#   DESTDIR     a staging root for packaging; nothing is enabled or started then
#   PYTHON      the interpreter the mgsave command runs on (default /usr/bin/python3: the
#               distribution's, with its python3-libvirt, python3-yaml, python3-jsonschema and,
#               if installed, python3-systemd). `make install` fails, naming the packages, when
#               it cannot import them.
#   CHECK_DEPS  no: skip that check (staging for another machine)
#   START       yes (default): arm the shutdown pass now by starting the unit; no: only enable it
#
# Layout (PREFIX=/usr/local):
#   /usr/local/lib/mgsave/libmgsave/         mgsave's code: plain Python files, no virtualenv
#   /usr/local/bin/mgsave                    runs it on $(PYTHON) (see bin/mgsave.in)
#   /usr/local/lib/mgsave/hooks/mgsave-{boot,shutdown,early,apt-hook}
#   /etc/apt/apt.conf.d/20mgsave             the apt hook (docs/UPGRADES.md), where /etc/apt exists
#   /usr/local/lib/systemd/system/mgsave{,-boot}.service   (/etc/systemd/system for other prefixes)
#   /usr/local/share/man/man8/mgsave.8, man5/mgsave-policy.5
#   /usr/local/share/bash-completion/completions/mgsave
#   /usr/local/share/zsh/site-functions/_mgsave   (zsh/vendor-completions for PREFIX=/usr)
#   /usr/local/share/mgsave/policy.schema.yaml
#   /usr/local/share/mgsave/schemas/mgsave.*.schema.json   the --json outputs' JSON Schemas
#   /usr/local/share/doc/mgsave/             README.md and the documents of docs/ it links, side by
#                                            side; examples/policy.sample.yaml
#   /etc/mgsave/policy.yaml                  every setting commented out (the built-in
#                                            defaults), only if there is no policy yet
# No virtualenv: one is tied to the interpreter it was made from, and once a distribution
# upgrade removes that Python the next shutdown pass fails and every guest is killed. The
# distribution upgrades its python3-* modules together with its python3. See docs/SYSTEMD.md.

PREFIX ?= /usr/local
DESTDIR ?=
PYTHON ?= /usr/bin/python3
CHECK_DEPS ?= yes
START ?= yes

BINDIR := $(PREFIX)/bin
LIBDIR := $(PREFIX)/lib/mgsave
HOOKDIR := $(LIBDIR)/hooks
DOCDIR := $(PREFIX)/share/doc/mgsave
DATADIR := $(PREFIX)/share/mgsave
MANDIR := $(PREFIX)/share/man
# bash-completion looks here for /usr and /usr/local (XDG_DATA_DIRS), and loads it on demand.
COMPLETIONDIR := $(PREFIX)/share/bash-completion/completions
# On zsh's fpath: site-functions for /usr/local, Debian's vendor-completions for /usr.
ZSHDIR := $(PREFIX)/share/zsh/$(if $(filter /usr,$(PREFIX)),vendor-completions,site-functions)
# The README and every document it links, installed side by side in $(DOCDIR).
DOCS := README.md docs/SYSTEMD.md docs/RELIABILITY.md docs/MIGRATION.md docs/POWER.md docs/PERFORMANCE.md docs/DESIGN.md \
	docs/TESTRIG.md docs/UPGRADES.md
# Their links name files of the source tree (docs/SYSTEMD.md, config/policy.sample.yaml,
# libmgsave/schemas); installed, each leads to where that file is installed instead, so that no
# link in $(DOCDIR) is broken (tests/test_package.py and tests/test_units.py follow every one).
DOC_LINKS = sed -e 's|](docs/\([A-Za-z0-9_-]*\.md\)|](\1|g' -e 's|](\.\./README\.md|](README.md|g' \
	-e 's|](config/policy\.sample\.yaml)|](examples/policy.sample.yaml)|g' \
	-e 's|](config/policy\.schema\.yaml)|](../../mgsave/policy.schema.yaml)|g' \
	-e 's|](libmgsave/schemas)|](../../mgsave/schemas)|g'
MANPAGES := man/mgsave.8 man/mgsave-policy.5
# systemd reads units from /usr/lib and /usr/local/lib, not from any other prefix.
ifneq ($(filter /usr /usr/local,$(PREFIX)),)
UNITDIR ?= $(PREFIX)/lib/systemd/system
else
UNITDIR ?= /etc/systemd/system
endif
UNITS := mgsave.service mgsave-boot.service mgsave-early.service
# Installed, not enabled: only a host whose policy has power: wants it (docs/POWER.md).
OPTIONAL_UNITS := mgsave-power.service
CONFDIR := /etc/mgsave
# apt runs the hook before it changes QEMU or libvirt (docs/UPGRADES.md); only where apt is.
APTCONF := /etc/apt/apt.conf.d/20mgsave
POLICY := $(CONFDIR)/policy.yaml
SAMPLE_POLICY := config/policy.default.yaml

# systemctl only for a real install on a host that runs systemd.
LIVE := $(if $(DESTDIR),,$(wildcard /run/systemd/system))
ROOT_OWNED := $(if $(filter 0,$(shell id -u)),-o root -g root,)
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@HOOKDIR@|$(HOOKDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
	-e 's|@LIBDIR@|$(LIBDIR)|g' -e 's|@PYTHON@|$(PYTHON)|g' \
	-e 's|/usr/share/mgsave/policy.schema.yaml|$(DATADIR)/policy.schema.yaml|g'
# What the mgsave command imports, and the distribution packages that provide it.
PY_DEPENDENCIES := libvirt:python3-libvirt yaml:python3-yaml jsonschema:python3-jsonschema

# make deb: a copy of what the package is built from, built outside the work tree (dpkg-buildpackage
# writes its results into the parent directory); the results are copied to $(DIST).
DEB_BUILD_DIR ?= build/deb
DIST ?= dist
DEB_SOURCES := debian libmgsave hooks units config man completions docs README.md setup.cfg pyproject.toml Makefile

.PHONY: all install check-python install-lib install-files install-docs install-policy install-systemd uninstall deb

all:
	@echo "nothing to build; run 'make install' as root, or 'make deb' (see docs/SYSTEMD.md)"

install: install-files install-policy install-systemd

check-python:
ifeq ($(CHECK_DEPS),yes)
	@if ! '$(PYTHON)' -I -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
		echo "make install: mgsave needs Python 3.11 or later as PYTHON=$(PYTHON)" >&2; exit 1; \
	fi
	@missing=; for dep in $(PY_DEPENDENCIES); do \
		'$(PYTHON)' -I -c "import $${dep%%:*}" 2>/dev/null || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "make install: $(PYTHON) cannot import mgsave's dependencies. Install the distribution's" \
			"packages:$$missing (the Debian and Ubuntu names; Fedora calls python3-yaml python3-pyyaml)," \
			"then run make install again." >&2; \
		exit 1; \
	fi
	@'$(PYTHON)' -I -c 'import systemd.journal' 2>/dev/null || \
		echo "note: without python3-systemd, mgsave's log records reach the journal without their MGSAVE_* fields"
endif

# The code as plain files (a symlink such as libmgsave/policy.schema.yaml becomes its target),
# compiled for $(PYTHON); swapped in whole, and an old install's virtualenv is removed.
install-lib: check-python
	rm -rf '$(DESTDIR)$(LIBDIR)/libmgsave.new'
	install -d -m 0755 '$(DESTDIR)$(LIBDIR)'
	cp -RL libmgsave '$(DESTDIR)$(LIBDIR)/libmgsave.new'
	find '$(DESTDIR)$(LIBDIR)/libmgsave.new' -name __pycache__ -prune -exec rm -rf {} +
	chmod -R u=rwX,go=rX '$(DESTDIR)$(LIBDIR)/libmgsave.new'
	'$(PYTHON)' -I -m compileall -q -d '$(LIBDIR)/libmgsave' '$(DESTDIR)$(LIBDIR)/libmgsave.new'
	rm -rf '$(DESTDIR)$(LIBDIR)/libmgsave' '$(DESTDIR)$(LIBDIR)/venv'
	mv '$(DESTDIR)$(LIBDIR)/libmgsave.new' '$(DESTDIR)$(LIBDIR)/libmgsave'

install-files: install-lib install-docs
	install -d -m 0755 '$(DESTDIR)$(BINDIR)' '$(DESTDIR)$(HOOKDIR)' '$(DESTDIR)$(UNITDIR)' '$(DESTDIR)$(DOCDIR)' \
		'$(DESTDIR)$(DATADIR)' '$(DESTDIR)$(MANDIR)/man8' '$(DESTDIR)$(MANDIR)/man5' '$(DESTDIR)$(COMPLETIONDIR)' \
		'$(DESTDIR)$(ZSHDIR)'
	# Each file is written beside its target and renamed over it (this also replaces the
	# symlink into the virtualenv that older versions installed as $(BINDIR)/mgsave).
	$(SUBST) bin/mgsave.in > '$(DESTDIR)$(BINDIR)/.mgsave.tmp'
	chmod 0755 '$(DESTDIR)$(BINDIR)/.mgsave.tmp'
	mv -f '$(DESTDIR)$(BINDIR)/.mgsave.tmp' '$(DESTDIR)$(BINDIR)/mgsave'
	for hook in mgsave-boot mgsave-shutdown mgsave-early mgsave-power mgsave-apt-hook; do \
		$(SUBST) "hooks/$$hook" > '$(DESTDIR)$(HOOKDIR)/'"$$hook.tmp" && \
		chmod 0755 '$(DESTDIR)$(HOOKDIR)/'"$$hook.tmp" && \
		mv -f '$(DESTDIR)$(HOOKDIR)/'"$$hook.tmp" '$(DESTDIR)$(HOOKDIR)/'"$$hook" || exit 1; \
	done
	for unit in $(UNITS) $(OPTIONAL_UNITS); do \
		$(SUBST) "units/$$unit" > '$(DESTDIR)$(UNITDIR)/'"$$unit.tmp" && \
		chmod 0644 '$(DESTDIR)$(UNITDIR)/'"$$unit.tmp" && \
		mv -f '$(DESTDIR)$(UNITDIR)/'"$$unit.tmp" '$(DESTDIR)$(UNITDIR)/'"$$unit" || exit 1; \
	done
	if [ -d '$(DESTDIR)/etc/apt/apt.conf.d' ]; then \
		$(SUBST) hooks/apt.conf > '$(DESTDIR)$(APTCONF).tmp' && \
		chmod 0644 '$(DESTDIR)$(APTCONF).tmp' && \
		mv -f '$(DESTDIR)$(APTCONF).tmp' '$(DESTDIR)$(APTCONF)'; \
	fi
	install -m 0644 config/policy.schema.yaml '$(DESTDIR)$(DATADIR)/policy.schema.yaml'
	install -d -m 0755 '$(DESTDIR)$(DATADIR)/schemas'
	install -m 0644 libmgsave/schemas/*.schema.json '$(DESTDIR)$(DATADIR)/schemas/'
	install -m 0644 man/mgsave.8 '$(DESTDIR)$(MANDIR)/man8/mgsave.8'
	install -m 0644 man/mgsave-policy.5 '$(DESTDIR)$(MANDIR)/man5/mgsave-policy.5'
	install -m 0644 completions/mgsave '$(DESTDIR)$(COMPLETIONDIR)/mgsave'
	install -m 0644 completions/_mgsave '$(DESTDIR)$(ZSHDIR)/_mgsave'

# Also what the Debian package installs (debian/rules).
install-docs:
	install -d -m 0755 '$(DESTDIR)$(DOCDIR)/examples'
	for doc in $(DOCS); do \
		$(DOC_LINKS) "$$doc" > '$(DESTDIR)$(DOCDIR)/'"$${doc##*/}.tmp" && \
		chmod 0644 '$(DESTDIR)$(DOCDIR)/'"$${doc##*/}.tmp" && \
		mv -f '$(DESTDIR)$(DOCDIR)/'"$${doc##*/}.tmp" '$(DESTDIR)$(DOCDIR)/'"$${doc##*/}" || exit 1; \
	done
	install -m 0644 config/policy.sample.yaml '$(DESTDIR)$(DOCDIR)/examples/policy.sample.yaml'

# The admin's policy is never overwritten: the default goes in only where there is none.
install-policy:
	install -d -m 0755 $(ROOT_OWNED) '$(DESTDIR)$(CONFDIR)'
	@if [ -e '$(DESTDIR)$(POLICY)' ]; then \
		echo "keeping the existing $(DESTDIR)$(POLICY)"; \
	elif [ -f '$(SAMPLE_POLICY)' ]; then \
		echo "installing $(SAMPLE_POLICY) as $(DESTDIR)$(POLICY)"; \
		$(SUBST) '$(SAMPLE_POLICY)' > '$(DESTDIR)$(POLICY).tmp' && \
		chmod 0644 '$(DESTDIR)$(POLICY).tmp' && \
		$(if $(ROOT_OWNED),chown root:root '$(DESTDIR)$(POLICY).tmp' &&) \
		mv '$(DESTDIR)$(POLICY).tmp' '$(DESTDIR)$(POLICY)'; \
	else \
		echo "no $(SAMPLE_POLICY) in this tree: mgsave runs on its built-in policy"; \
	fi

# Enable the three units (not mgsave-power.service: off by default), and (START=yes) start mgsave.service: it must be active for systemd to
# run the shutdown pass at the next shutdown. Starting it runs nothing. The boot pass
# (mgsave-boot.service) is not started: installing never starts a guest; it runs at the
# next boot. An already active unit is not restarted: a restart would run the shutdown pass.
install-systemd: install-files install-policy
ifneq ($(LIVE),)
	systemctl daemon-reload
	systemctl enable $(UNITS)
	# Where the admin enabled it, the UPS watch runs the new code (it only re-reads the UPS).
	systemctl try-restart $(OPTIONAL_UNITS)
ifeq ($(START),yes)
	systemctl start mgsave.service
	# It only waits for logind to announce a shutdown: restarting it runs nothing.
	systemctl restart mgsave-early.service
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
	-systemctl disable $(UNITS) $(OPTIONAL_UNITS)
	-systemctl stop mgsave-boot.service mgsave-early.service $(OPTIONAL_UNITS)
endif
	rm -f $(foreach unit,$(UNITS) $(OPTIONAL_UNITS),'$(DESTDIR)$(UNITDIR)/$(unit)') '$(DESTDIR)$(BINDIR)/mgsave' \
		'$(DESTDIR)$(MANDIR)/man8/mgsave.8' '$(DESTDIR)$(MANDIR)/man5/mgsave-policy.5' \
		'$(DESTDIR)$(COMPLETIONDIR)/mgsave' '$(DESTDIR)$(ZSHDIR)/_mgsave' '$(DESTDIR)$(APTCONF)'
	rm -rf '$(DESTDIR)$(LIBDIR)' '$(DESTDIR)$(DOCDIR)' '$(DESTDIR)$(DATADIR)'
ifneq ($(LIVE),)
	systemctl daemon-reload
	-systemctl stop mgsave.service
	-systemctl reset-failed $(UNITS) $(OPTIONAL_UNITS)
	@state=$$(systemctl is-enabled libvirt-guests.service 2>/dev/null || true); \
	if [ "$$state" = disabled ] || [ "$$state" = masked ]; then \
		echo "note: libvirt-guests.service is $$state, so nothing saves or shuts down the running guests at" \
			"shutdown now. If it was turned off for mgsave: systemctl unmask libvirt-guests.service &&" \
			"systemctl enable libvirt-guests.service"; \
	fi
endif
	@count=$$(find '$(DESTDIR)/var/lib/mgsave/images' -maxdepth 1 -type f -name '*.save' 2>/dev/null | wc -l); \
	if [ "$$count" -gt 0 ]; then \
		echo "note: $$count save file(s) of transient guests are left in /var/lib/mgsave/images/, and no boot" \
			"pass restores them now: 'virsh restore /var/lib/mgsave/images/<uuid>.save' brings such a guest back"; \
	fi

# The Debian package, as debian/ describes it (needs debhelper, dh-python,
# pybuild-plugin-pyproject, python3-all, python3-setuptools, dpkg-dev: scripts/setup installs them).
deb:
	@version=$$(sed -n '1s/^mgsave (\([^)]*\)).*/\1/p' debian/changelog); \
	code=$$(sed -n 's/^__version__ = "\(.*\)"/\1/p' libmgsave/__init__.py); \
	if [ "$$version" != "$$code" ]; then \
		echo "make deb: debian/changelog says $$version, libmgsave says $$code" >&2; exit 1; \
	fi
	rm -rf '$(DEB_BUILD_DIR)'
	mkdir -p '$(DEB_BUILD_DIR)/mgsave' '$(DIST)'
	tar -c --exclude=__pycache__ $(DEB_SOURCES) | tar -x -C '$(DEB_BUILD_DIR)/mgsave'
	# Debian's own tools and interpreters only (pybuild runs "python3.X" from PATH).
	cd '$(DEB_BUILD_DIR)/mgsave' && env PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -us -uc -b
	cp '$(DEB_BUILD_DIR)'/mgsave_*_all.deb '$(DEB_BUILD_DIR)'/mgsave_*.buildinfo \
		'$(DEB_BUILD_DIR)'/mgsave_*.changes '$(DIST)/'
	@ls -1 '$(DIST)'/mgsave_*_all.deb
