// Package ficm is the root of the FICM (fast inter-core messaging) message
// layer: 64-byte cache-line messages over shared memory between subOSes.
//
// The layer is pure Go on plain byte slices and is built in three levels,
// each usable and tested on its own:
//
//   - ficm/ring: a single-producer single-consumer ring of raw 64-byte
//     slots, split between the sender's memory (slots, producer index) and
//     the receiver's memory (consumer index), with every index read from the
//     peer validated.
//   - ficm/queue: message framing inside a slot, batching, and the
//     "needs doorbell" (NAPI arm/disarm) protocol.
//   - ficm/endpoint: one peer's view of N peers (one queue per ordered pair),
//     unicast, multicast and broadcast, round-robin receive, and the section
//     layout shared with the VMM and guests.
package ficm
