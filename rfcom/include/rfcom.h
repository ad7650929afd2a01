/*
 * rfcom.h - the RainForest shared-memory and RFcom ABI, for programs in
 * other languages than Go.
 *
 * This header only documents and names the ABI; the Go packages are its
 * definition (vmm/shmem/abi, ficm/ring, ficm/queue, ficm/endpoint,
 * ficm/board, ficm/control, rfcom) and a test (rfcom/header_test.go) checks every
 * constant below against them. All multi-byte fields are little-endian
 * (x86-64 host byte order).
 */
#ifndef RFCOM_H
#define RFCOM_H

#include <stdint.h>

/* ------------------------------------------------------------------ */
/* 1. The shared-memory PCI function (an ivshmem-v2 style device).     */
/* ------------------------------------------------------------------ */

#define RF_PCI_VENDOR_ID 0x110A
#define RF_PCI_DEVICE_ID 0x4106
#define RF_PCI_REVISION 2
/* Class code 0xFF00xx: the low byte is the protocol spoken over memory. */
#define RF_PCI_CLASS_OTHER 0xFF0000
#define RF_PROTOCOL_FICM 0x01    /* the machine-wide FICM group, "ficm" */
#define RF_PROTOCOL_SEGMENT 0x02 /* a named shared segment */

/* BARs: registers, MSI-X table/PBA, shared memory. */
#define RF_BAR_REGS 0
#define RF_BAR_MSIX 1
#define RF_BAR_MEM 2
#define RF_REG_BAR_SIZE 0x1000
#define RF_MSIX_BAR_SIZE 0x1000  /* MSI-X table at 0, PBA at RF_MSIX_PBA_OFFSET */
#define RF_MSIX_PBA_OFFSET 0x800
#define RF_MAX_VECTORS 64        /* MSI-X vectors of a function, at most */

/* Register BAR, 32-bit registers (use single 32-bit MOVs). */
#define RF_REG_ID 0x00          /* ro: this peer's id */
#define RF_REG_MAX_PEERS 0x04   /* ro: number of peers */
#define RF_REG_INT_CONTROL 0x08 /* bit 0: interrupts enabled */
#define RF_REG_DOORBELL 0x0C    /* wo: (target peer << 16) | vector */
#define RF_REG_STATE 0x10       /* this peer's state, mirrored in the state table */
#define RF_REG_INT_STATUS 0x14  /* read-to-clear: INTx vectors (bit 31: >= 31) */
#define RF_MAX_PEERS 4096
#define RF_INT_CONTROL_ENABLED 0x1
#define RF_DOORBELL_PEER_SHIFT 16
#define RF_DOORBELL_VECTOR_MASK 0xFFFF
#define RF_MAX_VECTOR 0xFFFF
#define RF_DOORBELL(peer, vector) \
    (((uint32_t)(peer) << RF_DOORBELL_PEER_SHIFT) | ((uint32_t)(vector) & RF_DOORBELL_VECTOR_MASK))
#define RF_INT_STATUS_LAST_BIT 31 /* INT_STATUS bit of every vector >= 31 */

/*
 * Vendor-specific capability (PCI capability id 0x09) in config space;
 * offsets from the capability's start:
 *   +0 u8 id 0x09, +1 u8 next, +2 u8 length (>= RF_CAP_LENGTH), +3 reserved
 */
#define RF_CAP_LENGTH_OFFSET 2    /* u8 */
#define RF_CAP_STATE_TABLE_SIZE 4 /* u32 */
#define RF_CAP_RW_SIZE 8          /* u64 */
#define RF_CAP_OUTPUT_SIZE 16     /* u64 */
#define RF_CAP_FLAGS 24           /* u32, RF_CAP_FLAG_* */
#define RF_CAP_NAME 28            /* char[RF_NAME_SIZE], NUL-padded */
#define RF_CAP_LENGTH 60
#define RF_CAP_FLAG_RW_READONLY 0x1 /* RW section is read-only for this peer */
#define RF_NAME_SIZE 32

/*
 * Memory BAR, each part a multiple of RF_PAGE_SIZE, back to back:
 *   [0, S)                      state table: u32 per peer at
 *                               RF_STATE_ENTRY_OFFSET(peer), read-only
 *                               (see the state-change interrupt below)
 *   [S, S+RW)                   read-write section (segments: the segment)
 *   [S+RW+i*OUT, +OUT)          output section of peer i (writable only by i)
 * S, RW and OUT are the capability's sizes.
 */
#define RF_PAGE_SIZE 4096
#define RF_STATE_ENTRY_SIZE 4
#define RF_STATE_ENTRY_OFFSET(peer) ((peer) * RF_STATE_ENTRY_SIZE)
#define RF_STATE_ABSENT 0   /* entry of a peer reset or not connected */
#define RF_STATE_ALIVE 0x1  /* FICM: the peer's endpoint is open */

/*
 * State-change interrupt (as in the ivshmem v2 specification): writing
 * RF_REG_STATE with a value different from the previous one updates this
 * peer's entry of the state table and raises vector RF_STATE_CHANGE_VECTOR
 * on every other peer that enabled interrupts; a peer that is reset or
 * disconnected gets its entry zeroed with the same interrupt. The writer's
 * VMM signals the guests' STATE writes; the supervisor (FICM peer 0)
 * signals changes of its own entry and the zeroing of a departed subOS's.
 * A program therefore never polls the state table: it re-reads it when
 * vector 0 fires (FICM's doorbells use vector 0 too, so one sleep waits
 * for both).
 */
#define RF_STATE_CHANGE_VECTOR 0

/* ------------------------------------------------------------------ */
/* 2. The FICM group (protocol 1).                                     */
/* ------------------------------------------------------------------ */

/*
 * Peer 0 is the supervisor; subOSes are 1..N-1. Doorbell vector 0, the
 * state-change vector: a sleeping peer wakes for messages and for changes
 * of the state table (a peer's channels end when its entry loses
 * RF_STATE_ALIVE).
 * Every output section:
 *   [0, 4096)                         info page; peer 0's holds the board
 *   [4096, 4096 + endpoint section)   the endpoint section below
 */
#define RF_FICM_INFO_PAGE_SIZE 4096
#define RF_FICM_SECTION_OFFSET 4096
#define RF_FICM_SLOTS 64
#define RF_FICM_VECTOR 0
#define RF_FICM_SUPERVISOR 0
#define RF_FICM_MAX_PEERS 256

/*
 * Endpoint section of peer i, P peers, S slots per ring:
 *   [0, P*128)              receiver areas: entry j (at j*128) is the
 *                           consumer side of the queue j -> i
 *   [TXBASE, TXBASE + P*T)  sender areas: entry j (at TXBASE + j*T) is the
 *                           producer side of the queue i -> j
 *   TXBASE = P*128 rounded up to 4096, T = 64 + 64*S,
 *   section size = TXBASE + P*T rounded up to 4096. Entries j == i unused.
 */
#define RF_FICM_TXBASE(P) ((((P) * RF_QUEUE_RX_SIZE) + 4095) & ~4095)
#define RF_FICM_TX_SIZE(S) (RF_RING_HEADER_SIZE + RF_RING_SLOT_SIZE * (S))
#define RF_FICM_RX_OFFSET(j) ((j) * RF_QUEUE_RX_SIZE)
#define RF_FICM_TX_OFFSET(P, S, j) (RF_FICM_TXBASE(P) + (j) * RF_FICM_TX_SIZE(S))
#define RF_FICM_SECTION_SIZE(P, S) \
	((RF_FICM_TXBASE(P) + (P) * RF_FICM_TX_SIZE(S) + 4095) & ~4095)

/*
 * Ring (single producer, single consumer):
 *   sender area:   [0,4) u32 producer index, [4,64) zero, then S slots of 64
 *   receiver area: [0,4) u32 consumer index, [4,64) zero,
 *                  [64,68) u32 armed word (bit 0: wake me with a doorbell)
 * Indices are free-running u32: slot = index % S; empty when prod == cons,
 * full when prod - cons == S. Producer: write slot, then store prod
 * (release). Consumer: load prod (acquire), copy the slot out, then store
 * cons. Validate the peer's index: prod - cons <= S, else the peer is
 * corrupt. Doorbell (NAPI): receiver stores armed=1, full barrier, re-reads
 * prod; sender stores prod, full barrier, loads armed and rings the peer's
 * doorbell (RF_REG_DOORBELL = peer << 16 | RF_FICM_VECTOR) if bit 0 is set.
 */
#define RF_RING_SLOT_SIZE 64
#define RF_RING_HEADER_SIZE 64
#define RF_RING_RX_SIZE 64
#define RF_QUEUE_ARMED_OFFSET 64
#define RF_QUEUE_RX_SIZE 128

/* Slot framing: a slot is one message. len > 62 is a bad frame. */
#define RF_QUEUE_HEADER_SIZE 2
#define RF_QUEUE_MAX_PAYLOAD 62

struct rf_msg {
	uint8_t type;
	uint8_t len;
	uint8_t data[RF_QUEUE_MAX_PAYLOAD];
};

/* ------------------------------------------------------------------ */
/* 3. The board: peer 0's info page, seqlock-protected.                */
/* ------------------------------------------------------------------ */

/*
 * Read: load seq (must be even), copy the page, load seq again; equal =>
 * consistent, otherwise retry. Validate every field.
 */
#define RF_BOARD_MAGIC 0x44424652 /* "RFBD" */
#define RF_BOARD_VERSION 1
#define RF_BOARD_MAX_ENTRIES 63
#define RF_BOARD_MAX_COMM_CORES 8
#define RF_BOARD_ENTRIES_OFFSET 0x40
#define RF_BOARD_ENTRY_SIZE 64
#define RF_BOARD_NAME_MAX 32
#define RF_BOARD_STATE_RUNNING 1
#define RF_BOARD_STATE_STOPPING 2

struct rf_board_entry {
	uint16_t peer;
	uint8_t state;  /* RF_BOARD_STATE_* */
	uint8_t ncores; /* <= RF_BOARD_MAX_COMM_CORES */
	uint16_t cores[RF_BOARD_MAX_COMM_CORES];
	uint8_t mac[6];      /* all zero: none */
	uint8_t reserved[6]; /* zero */
	char name[32];       /* 1..32 bytes of [A-Za-z0-9._-], NUL-padded when shorter */
};

struct rf_board {
	uint32_t magic;
	uint16_t version;
	uint16_t count; /* <= RF_BOARD_MAX_ENTRIES */
	uint64_t seq;   /* seqlock: odd while written */
	uint16_t supervisor;
	uint8_t reserved[46];
	struct rf_board_entry entries[RF_BOARD_MAX_ENTRIES];
};

_Static_assert(sizeof(struct rf_board_entry) == RF_BOARD_ENTRY_SIZE, "board entry");
_Static_assert(sizeof(struct rf_board) == 4096, "board page");

/* ------------------------------------------------------------------ */
/* 4. Message types.                                                   */
/* ------------------------------------------------------------------ */

/* 0x01..0x3F: RFcom channels (section 5). */
#define RF_TYPE_OPEN 0x01       /* u16 port, u16 src, u32 window */
#define RF_TYPE_ACCEPT 0x02     /* u16 dst, u16 src, u32 window */
#define RF_TYPE_REFUSE 0x03     /* u16 dst, u8 reason */
#define RF_TYPE_DATA_FIRST 0x04 /* u16 dst, u16 frame length - 1, 0..58 bytes */
#define RF_TYPE_DATA 0x05       /* u16 dst, 1..60 bytes */
#define RF_TYPE_CREDIT 0x06     /* u16 dst, u32 bytes */
#define RF_TYPE_CLOSE 0x07      /* u16 dst */

/* 0x40..0x4F: supervisor control. TEXT/BOARD only honoured from peer 0. */
#define RF_TYPE_TEXT 0x40  /* 1..62 bytes of UTF-8 */
#define RF_TYPE_BOARD 0x41 /* u64 board seq */
#define RF_TYPE_PING 0x42  /* u64 cookie */
#define RF_TYPE_PONG 0x43  /* u64 cookie */

/* 0x80..0xFF: application datagrams, payload 0..62 bytes. */
#define RF_TYPE_DATAGRAM_FIRST 0x80

/* ------------------------------------------------------------------ */
/* 5. RFcom channel protocol.                                          */
/* ------------------------------------------------------------------ */

/*
 * Channel ids are u16 (1..65535), chosen by each side for its end; every
 * message names the receiver's id (dst). Dialer: OPEN(port, its id,
 * window). Listener: ACCEPT(dialer's id, its id, window) or REFUSE.
 * A frame of 1..RF_MAX_FRAME bytes = DATA_FIRST (total length - 1, first
 * bytes) + DATA (the rest, in order). Credit in data bytes: a sender starts
 * with the peer's window, spends each fragment's data length, and waits
 * when out of credit; the receiver returns CREDIT as frames are read.
 * windows are RF_MAX_FRAME..RF_MAX_WINDOW. CLOSE: the peer reads the
 * frames in flight, then end of stream; each side sends CLOSE once.
 */
#define RF_MAX_FRAME 65536
#define RF_FIRST_FRAGMENT_DATA 58
#define RF_FRAGMENT_DATA 60
#define RF_DEFAULT_WINDOW 262144
#define RF_MAX_WINDOW 1073741824
#define RF_REFUSE_NO_LISTENER 1
#define RF_REFUSE_BACKLOG_FULL 2
#define RF_REFUSE_NO_CHANNEL_ID 3

#endif /* RFCOM_H */
