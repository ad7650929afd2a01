// Package endpointtest holds checks shared by the tests of code that runs
// FICM endpoints over a device (rfcom/device, rfcom/ivshmem).
package endpointtest

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"rainforest/ficm/endpoint"
	"rainforest/ficm/queue"
)

// Echo sends n messages of type typ, numbered, from a (peer 0) to b (peer
// 1) in bursts of up to 32, b sends each back, and a checks that every
// echo arrives once and in order. It returns the first failure.
func Echo(ctx context.Context, a, b *endpoint.Endpoint, typ uint8, n int) error {
	send := func(e *endpoint.Endpoint, to int, m queue.Message) error {
		for {
			err := e.Send(to, m)
			if !errors.Is(err, endpoint.ErrFull) {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Microsecond):
			}
		}
	}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Go(func() { // b echoes every message back
		for range n {
			from, m, err := b.RecvWait(ctx)
			if err == nil && from != 0 {
				err = fmt.Errorf("b: message from peer %d, not 0", from)
			}
			if err == nil {
				err = send(b, 0, m)
			}
			if err != nil {
				errc <- err
				return
			}
		}
	})
	wg.Go(func() { // a sends in bursts and checks the echoes in order
		next := 0
		for sent := 0; sent < n || next < n; {
			for sent < n && sent-next < 32 {
				m, _ := queue.NewMessage(typ, binary.LittleEndian.AppendUint32(nil, uint32(sent)))
				err := a.Send(1, m)
				if errors.Is(err, endpoint.ErrFull) {
					break
				}
				if err != nil {
					errc <- err
					return
				}
				sent++
			}
			if next == sent {
				continue
			}
			from, m, err := a.RecvWait(ctx)
			if err != nil {
				errc <- err
				return
			}
			if got := binary.LittleEndian.Uint32(m.Payload()); from != 1 || got != uint32(next) {
				errc <- fmt.Errorf("a: echo %d from peer %d, want %d from peer 1", got, from, next)
				return
			}
			next++
		}
	})
	wg.Wait()
	close(errc)
	return <-errc
}
