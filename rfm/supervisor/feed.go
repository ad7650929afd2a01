package supervisor

import (
	"context"
	"errors"
	"sync"

	"rainforest/ledger/store"
)

// Why a subscription to the audit events ended (Subscription.Err).
var (
	// ErrSlowSubscriber: the subscriber fell SubscriberBuffer events
	// behind and was dropped; it can read what it missed from Events.
	ErrSlowSubscriber = errors.New("event subscriber too slow: dropped")
	// ErrFeedClosed: the supervisor closed.
	ErrFeedClosed = errors.New("event feed closed")
)

// SubscriberBuffer is how many events a subscriber may fall behind before
// it is dropped.
const SubscriberBuffer = 256

// EventFeed hands each audit event, in sequence order, to its
// subscribers. Publishing never blocks: a subscriber whose buffer is full
// is dropped. The zero value is ready to use.
type EventFeed struct {
	mu     sync.Mutex
	subs   map[*Subscription]struct{}
	closed bool
}

// Subscription receives the events published after it was made. Its
// owner is the context given to Subscribe: the subscription ends when that
// context does, when the subscriber is too slow, or when the feed closes.
type Subscription struct {
	// C delivers the events in sequence order; it is closed when the
	// subscription ends (then Err says why).
	C    <-chan store.Event
	ch   chan store.Event
	err  error // under the feed's mu
	feed *EventFeed
	stop func() bool // stops the context watch
}

// Subscribe subscribes to the events published from now on until ctx
// ends.
func (f *EventFeed) Subscribe(ctx context.Context) *Subscription {
	ch := make(chan store.Event, SubscriberBuffer)
	sub := &Subscription{C: ch, ch: ch, feed: f}
	f.mu.Lock()
	if f.closed {
		sub.end(ErrFeedClosed)
		f.mu.Unlock()
		return sub
	}
	if f.subs == nil {
		f.subs = map[*Subscription]struct{}{}
	}
	f.subs[sub] = struct{}{}
	// A context already done runs remove in its own goroutine, after
	// this unlocks.
	sub.stop = context.AfterFunc(ctx, func() { f.remove(sub, context.Cause(ctx)) })
	f.mu.Unlock()
	return sub
}

// Err says why the subscription ended; nil while it runs.
func (s *Subscription) Err() error {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	return s.err
}

// end closes the subscription's channel; under the feed's mu.
func (s *Subscription) end(why error) {
	s.err = why
	close(s.ch)
}

// remove ends sub (once) with why.
func (f *EventFeed) remove(sub *Subscription, why error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.subs[sub]; !ok {
		return
	}
	delete(f.subs, sub)
	sub.end(why)
}

// Publish hands e to every subscriber, dropping those whose buffer is
// full. Callers publish in sequence order (the supervisor holds Lock
// across appending an event and publishing it).
func (f *EventFeed) Publish(e store.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.publishLocked(e)
}

func (f *EventFeed) publishLocked(e store.Event) {
	for sub := range f.subs {
		select {
		case sub.ch <- e:
		default:
			delete(f.subs, sub)
			sub.end(ErrSlowSubscriber)
			if sub.stop != nil {
				sub.stop()
			}
		}
	}
}

// Subscribers is the number of subscriptions running.
func (f *EventFeed) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// Close ends every subscription with ErrFeedClosed; later ones end at
// once.
func (f *EventFeed) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for sub := range f.subs {
		delete(f.subs, sub)
		sub.end(ErrFeedClosed)
		if sub.stop != nil {
			sub.stop()
		}
	}
}

// SubscribeEvents subscribes to the audit events appended from now on,
// until ctx ends (see EventFeed). Events appended before are read with
// Events; a subscriber that reads both skips the events it saw twice by
// their Seq.
func (s *Supervisor) SubscribeEvents(ctx context.Context) *Subscription {
	return s.feed.Subscribe(ctx)
}
