package supervisor

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// backendScript is what StartBackend runs first: a shell that waits for
// the supervisor's go on descriptor 3, closes it and becomes the back end
// (exec keeps the pid, the session and the cgroup).
const backendScript = `read -r go <&3 && [ "$go" = go ] || exit 125; exec 3<&-; exec "$@"`

// StartBackend implements BackendLauncher.
func (l ExecLauncher) StartBackend(ctx context.Context, argv []string, logPath string, files []*os.File, prepare func(pid int) error) (Process, error) {
	if len(argv) == 0 || !filepath.IsAbs(argv[0]) {
		return nil, fmt.Errorf("%w: back end command %q: want an absolute path", ErrInvalid, argv)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("back end log: %w", err)
	}
	defer logf.Close()
	goRd, goWr, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer goWr.Close()
	cmd := exec.Command("/bin/sh", append([]string{"-c", backendScript, filepath.Base(argv[0])}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = append([]*os.File{goRd}, files...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	goRd.Close()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	p := &childProcess{cmd: cmd, done: make(chan struct{})}
	go func() { // owner: the process; ends when it exits
		_ = cmd.Wait()
		close(p.done)
	}()
	if st, err := procStartTime(l.procRoot(), cmd.Process.Pid); err == nil {
		p.start = st
	}
	if prepare != nil {
		if err := prepare(cmd.Process.Pid); err != nil {
			_ = cmd.Process.Kill()
			<-p.done
			return nil, err
		}
	}
	if ctx.Err() != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, ctx.Err()
	}
	if _, err := goWr.Write([]byte("go\n")); err != nil {
		_ = cmd.Process.Kill()
		<-p.done
		return nil, fmt.Errorf("%s exited before starting: %s", argv[0], logTail(logPath, 2))
	}
	return p, nil
}
