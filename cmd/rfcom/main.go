// Command rfcom is the RFcom tool for programs and people inside a subOS:
// it lists the FICM device, the segments granted and the board, sends and
// receives frames over RFcom channels, benchmarks 64-byte messages, maps
// shared segments and prints the supervisor's control messages; for tests
// it also floods doorbells and rings and benchmarks a disk.
//
// Usage:
//
//	rfcom ls
//	rfcom send (--to NAME | --peer N) [--port P] [--timeout D] [MSG...]
//	rfcom recv [--port P] [--count N] [--timeout D]
//	rfcom bench (--to NAME | --peer N) [--n N] [--mode poll|irq] [--timeout D]
//	rfcom bench --serve [--mode poll|irq] [--timeout D]
//	rfcom bench --ivshmem [--peers N] (--peer N | --serve) [--n N] [--mode poll|irq] [--timeout D]
//	rfcom map NAME [--write TEXT] [--offset N] [--read N]
//	rfcom control [--count N] [--timeout D]
//	rfcom board
//	rfcom daemon [--socket PATH]
//	rfcom flood doorbell --peer N [--vector V] [--duration D | --count C]
//	rfcom flood msg [--to supervisor|PEER|NAME] [--duration D | --count C]
//	rfcom diskbench --dev PATH [--seconds S] [--write --i-know-it-is-scratch]
//
// rfcom daemon owns this subOS's RFcom node and serves local programs on a
// Unix socket (rainforest/rfcom/local), so that several of them use RFcom
// at once and the subOS stays alive in the group between them; it prints
// the supervisor's control messages ("control: TEXT", "board: seq N") and
// stops on SIGTERM or SIGINT. While a daemon answers on the socket
// (--socket, else $RFCOM_SOCKET, else /run/rfcom.sock), send, recv,
// control, ls and board go through it; without one they use the device
// directly. bench needs the device alone and refuses to run beside a
// daemon; map does not touch the FICM device.
//
// bench --ivshmem runs the same benchmark between two QEMU guests over
// QEMU's ivshmem-doorbell device (rainforest/rfcom/ivshmem) as a baseline:
// --peer names the ivshmem peer id, --peers the group size (2).
//
// flood does what a malicious guest would, for the hardening tests: flood
// doorbell writes peer N's doorbell (vector V, 0 by default) through the
// FICM device's DOORBELL register as fast as it can, without joining the
// group, and prints "RF-FLOOD doorbells=N seconds=S rate=R"; flood msg joins
// the group (not beside a daemon) and sends 62-byte datagrams (type 0x86,
// a sequence number first) to the supervisor (the default), a peer id or
// a subOS name as fast as the ring takes them, retrying at once on a full
// ring, and prints "RF-FLOOD messages=N refused=M seconds=S" (M: attempts
// that found the ring full). Both run for --duration (10s by default) or
// until --count operations went through; they print their line also when
// SIGINT or SIGTERM ends them early (exit 0) and when a send fails (exit 1,
// e.g. the peer died).
//
// diskbench measures a disk as fio would with O_DIRECT at queue depth 1,
// each phase for --seconds (5 by default): sequential 1 MiB reads, random
// 4 KiB reads and, with --write, the same as writes (it overwrites the
// device, so --write needs --i-know-it-is-scratch, and a read-only,
// mounted or busy device is refused). It prints one line "RF-DISK direct=1
// size_bytes=N seconds=S seq_read_mbps=MB/s rand_read_iops=N
// rand_read_p50_us=US rand_read_p99_us=US" followed, with --write, by
// seq_write_mbps, rand_write_iops, rand_write_p50_us and rand_write_p99_us
// (MB are 10^6 bytes). On a regular file whose file system refuses
// O_DIRECT (tmpfs) it measures through the page cache, says so on stderr
// and prints direct=0.
//
// Exit status: 0 on success, 1 on failure (one line "rfcom: ..." on
// stderr), 2 on a usage error. The environment variables RFCOM_SYS_ROOT
// and RFCOM_DEV_ROOT replace /sys and /dev (for tests).
package main

import (
	"context"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, os.Getenv))
}

// env is what a command runs with.
type env struct {
	ctx            context.Context // ends the daemon (besides signals)
	stdin          io.Reader
	stdout, stderr io.Writer
	sys, dev       string
	socket         string // $RFCOM_SOCKET
	// openFile is os.OpenFile (a stand-in in tests of diskbench).
	openFile func(name string, flag int, perm os.FileMode) (*os.File, error)
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	return runContext(context.Background(), args, stdin, stdout, stderr, getenv)
}

// runContext is run with a context that stops the daemon.
func runContext(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	e := &env{
		ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr,
		sys: getenv("RFCOM_SYS_ROOT"), dev: getenv("RFCOM_DEV_ROOT"), socket: getenv("RFCOM_SOCKET"),
		openFile: os.OpenFile,
	}
	return e.main(args)
}
