package images

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ErrAptUnavailable means apt-get/apt-cache/dpkg-deb are missing or cannot
// resolve packages (no package lists and not allowed to update them).
var ErrAptUnavailable = errors.New("images: Debian package tools unavailable")

// debTools runs apt and dpkg for one build.
type debTools struct {
	log      io.Writer
	cacheDir string
	updated  bool
}

func (d *debTools) run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// aptUpdate runs apt-get update once per build, streaming its output to
// the log.
func (d *debTools) aptUpdate(ctx context.Context) error {
	if d.updated {
		return nil
	}
	d.updated = true
	fmt.Fprintln(d.log, "images: apt-get update")
	cmd := exec.CommandContext(ctx, "apt-get", "update")
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout = d.log
	cmd.Stderr = d.log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%w: apt-get update: %v", ErrAptUnavailable, err)
	}
	return nil
}

// candidate returns the concrete package name and candidate version for
// name, following a meta-package (such as linux-image-cloud-amd64) to the
// versioned package it depends on when follow is set.
func (d *debTools) candidate(ctx context.Context, name string, follow bool) (string, string, error) {
	pkg, ver, err := d.candidateOnce(ctx, name, follow)
	if err == nil {
		return pkg, ver, nil
	}
	if uerr := d.aptUpdate(ctx); uerr != nil {
		return "", "", fmt.Errorf("%w (after: %v)", uerr, err)
	}
	return d.candidateOnce(ctx, name, follow)
}

func (d *debTools) candidateOnce(ctx context.Context, name string, follow bool) (string, string, error) {
	pkg := name
	if follow {
		out, err := d.run(ctx, "", "apt-cache", "depends", "--important", name)
		if err != nil {
			return "", "", fmt.Errorf("%w: %v", ErrAptUnavailable, err)
		}
		if dep := metaTarget(name, out); dep != "" {
			pkg = dep
		}
	}
	out, err := d.run(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", "", fmt.Errorf("%w: %v", ErrAptUnavailable, err)
	}
	ver := controlField(out, "Version")
	if ver == "" {
		return "", "", fmt.Errorf("%w: no candidate version for %s", ErrAptUnavailable, pkg)
	}
	return pkg, ver, nil
}

// metaTarget picks the versioned package a kernel meta-package depends on
// from apt-cache depends output ("  Depends: linux-image-6.1.0-56-cloud-amd64").
func metaTarget(meta string, out []byte) string {
	prefix := ""
	if strings.HasPrefix(meta, "linux-image-") {
		prefix = "linux-image-"
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: ")
		if !ok {
			continue
		}
		dep = strings.Trim(strings.TrimSpace(dep), "<>")
		if strings.HasPrefix(dep, prefix) && dep != meta {
			return dep
		}
	}
	return ""
}

// controlField returns the first value of a Debian control field.
func controlField(out []byte, field string) string {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+": "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// download fetches pkg=ver into the cache directory (skipping the download
// when a .deb of that version is already there) and returns its path.
func (d *debTools) download(ctx context.Context, pkg, ver string) (string, error) {
	if err := os.MkdirAll(d.cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("images: cache dir: %w", err)
	}
	find := func() string {
		matches, _ := filepath.Glob(filepath.Join(d.cacheDir, pkg+"_*.deb"))
		for _, m := range matches {
			out, err := d.run(ctx, "", "dpkg-deb", "-f", m, "Version")
			if err == nil && strings.TrimSpace(string(out)) == ver {
				return m
			}
		}
		return ""
	}
	if p := find(); p != "" {
		fmt.Fprintf(d.log, "images: cached %s %s\n", pkg, ver)
		return p, nil
	}
	fmt.Fprintf(d.log, "images: apt-get download %s=%s\n", pkg, ver)
	cmd := exec.CommandContext(ctx, "apt-get", "download", pkg+"="+ver)
	cmd.Dir = d.cacheDir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	cmd.Stdout = d.log
	cmd.Stderr = d.log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: apt-get download %s=%s: %v", ErrAptUnavailable, pkg, ver, err)
	}
	if p := find(); p != "" {
		return p, nil
	}
	return "", fmt.Errorf("images: apt-get download %s left no .deb in %s", pkg, d.cacheDir)
}

// unpack extracts a .deb into dir (once; an existing dir is reused).
func (d *debTools) unpack(ctx context.Context, deb, dir string) error {
	if st, err := os.Stat(dir); err == nil && st.IsDir() {
		return nil
	}
	tmp := dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("images: unpack: %w", err)
	}
	fmt.Fprintf(d.log, "images: unpacking %s\n", filepath.Base(deb))
	if _, err := d.run(ctx, "", "dpkg-deb", "-x", deb, tmp); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("images: unpack: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return fmt.Errorf("images: unpack: %w", err)
	}
	return nil
}

// fetch resolves, downloads and unpacks a package and returns the unpacked
// root, the concrete package name and its version.
func (d *debTools) fetch(ctx context.Context, name string, follow bool) (root, pkg, ver string, err error) {
	pkg, ver, err = d.candidate(ctx, name, follow)
	if err != nil {
		return "", "", "", err
	}
	root, err = d.fetchVersion(ctx, pkg, ver)
	if err != nil {
		return "", "", "", err
	}
	return root, pkg, ver, nil
}

// fetchVersion downloads (once, into the cache) and unpacks version ver
// of the concrete package pkg and returns the unpacked root. apt-get
// download checks the .deb against the archive's signed index, as for
// any candidate.
func (d *debTools) fetchVersion(ctx context.Context, pkg, ver string) (string, error) {
	deb, err := d.download(ctx, pkg, ver)
	if err != nil {
		if uerr := d.aptUpdate(ctx); uerr != nil {
			return "", fmt.Errorf("%w (after: %v)", uerr, err)
		}
		if deb, err = d.download(ctx, pkg, ver); err != nil {
			return "", err
		}
	}
	root := filepath.Join(d.cacheDir, pkg+"_"+strings.ReplaceAll(ver, ":", "%3a"))
	if err := d.unpack(ctx, deb, root); err != nil {
		return "", err
	}
	return root, nil
}
