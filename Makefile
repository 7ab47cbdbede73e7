# make rpm: dist/dicom-gw-<version>-1.<arch>.rpm from the committed tree (HEAD).
# See rpm/README.md. RPMBUILD_FLAGS adds rpmbuild options, e.g.
#   make rpm RPMBUILD_FLAGS="--without webui --define '_binary_payload w1T.zstdio'"
# TOPDIR (rpmbuild's work tree) and DIST (where the RPM goes) can be moved.

NAME := dicom-gw
VERSION := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
TOPDIR := $(CURDIR)/build/rpm
DIST := $(CURDIR)/dist
RPMBUILD_FLAGS ?=
# On a system whose packages are not RPMs (Debian), BuildRequires cannot be checked.
NODEPS := $(shell rpm -q rpm >/dev/null 2>&1 || echo --nodeps)

.PHONY: rpm
rpm:
	rm -rf $(TOPDIR)
	mkdir -p $(TOPDIR)/SOURCES $(DIST)
	git archive --format=tar.gz --prefix=$(NAME)-$(VERSION)/ \
		-o $(TOPDIR)/SOURCES/$(NAME)-$(VERSION).tar.gz HEAD
	rpmbuild -bb $(NODEPS) \
		--define "_topdir $(TOPDIR)" \
		--define "_rpmdir $(DIST)" \
		--define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
		--define "dicomgw_version $(VERSION)" \
		$(RPMBUILD_FLAGS) rpm/dicom-gw.spec
