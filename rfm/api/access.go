package api

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"rainforest/internal/buildinfo"
	"rainforest/internal/peercred"
)

// Bounds on answering refused peers.
const (
	// refuseTimeout bounds writing a refused peer its 403 and draining
	// its request.
	refuseTimeout = time.Second
	// maxRefusing bounds the refused connections being answered at once;
	// beyond it they are closed without an answer.
	maxRefusing = 64
	// maxDrain bounds what is read (and dropped) from a refused peer so
	// that closing does not reset the connection before it reads the 403.
	maxDrain = 64 << 10
)

// Listen creates the API socket at path and returns a listener that hands
// on only the connections policy allows. The socket file is born 0660
// with group policy.Group when the policy has a group, else 0600. A
// refused peer is answered 403 with an ErrorBody saying why, its
// connection closed, and logged at WARN (uid, gid, pid; bounded) to log.
func Listen(path string, policy peercred.Policy, log *slog.Logger) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("API socket %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another supervisor is serving %s", path)
		}
		os.Remove(path)
	}
	mode, gid := os.FileMode(0o600), -1
	if policy.Group != peercred.NoGroup {
		mode, gid = 0o660, policy.Group
	}
	ln, err := peercred.ListenUnix(path, mode, gid)
	if err != nil {
		return nil, fmt.Errorf("API socket: %w", err)
	}
	return &accessListener{UnixListener: ln, policy: policy, refusals: peercred.NewRefusals(log), refusing: make(chan struct{}, maxRefusing)}, nil
}

// accessListener accepts the connections its policy allows and answers
// the others itself.
type accessListener struct {
	*net.UnixListener
	policy   peercred.Policy
	refusals *peercred.Refusals
	refusing chan struct{} // a slot per refused connection being answered
	wg       sync.WaitGroup
}

// Accept returns the next allowed connection.
func (l *accessListener) Accept() (net.Conn, error) {
	for {
		c, err := l.UnixListener.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peercred.Of(c)
		if err == nil {
			err = l.policy.Check(cred)
		}
		if err == nil {
			return c, nil
		}
		l.refusals.Refused("API socket", cred, err)
		select {
		case l.refusing <- struct{}{}:
			l.wg.Add(1)
			go func() { // owner: l; Close waits
				defer l.wg.Done()
				defer func() { <-l.refusing }()
				forbid(c, err)
			}()
		default:
			c.Close()
		}
	}
}

// Close stops listening and waits for the refusals being answered.
func (l *accessListener) Close() error {
	err := l.UnixListener.Close()
	l.wg.Wait()
	return err
}

// forbid answers a refused peer 403, without reading its request, and
// closes the connection.
func forbid(c *net.UnixConn, why error) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(refuseTimeout))
	body, _ := json.Marshal(ErrorBody{Error: "forbidden: " + why.Error()})
	fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s: %s\r\nConnection: close\r\n\r\n%s\n", len(body)+1, VersionHeader, buildinfo.Read(), body)
	_ = c.CloseWrite()
	// Drop what the peer sent: closing with unread data would reset the
	// connection under the 403.
	_, _ = io.Copy(io.Discard, io.LimitReader(c, maxDrain))
}

// PeerName describes the process at the other end of a Unix socket
// connection from its kernel-checked credentials (SO_PEERCRED), e.g. "uid
// 0 pid 4242"; nothing the client chose (its command name) goes in it.
// "api" when they cannot be read.
func PeerName(c net.Conn) string {
	cred, err := peercred.Of(c)
	if err != nil {
		return "api"
	}
	return fmt.Sprintf("uid %d pid %d", cred.UID, cred.PID)
}
