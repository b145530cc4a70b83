/* The writer guest: a small program that writes its disks through the BIOS.
 *
 * SeaBIOS loads sector 0 of the domain's read-only boot disk (drive 0x80) at 0x7c00; that
 * sector loads the rest of the program (sectors 1..LOAD_SECTORS) behind it and goes on.
 * The configuration comes from QEMU's fw_cfg file "opt/org.virtdlm/writer" (libvirt:
 * <sysinfo type='fwcfg'>), a string "MODES:SLOT:ID": one mode letter per data disk in
 * BIOS order (0x81, 0x82, ...), the shareable slot as one character ('0' + slot), and the
 * writer id (up to 16 bytes, the domain's name). Then it loops forever:
 *   x  exclusive disk: read LBA 0; if its last write there succeeded and what it reads is
 *      not that record, another writer wrote in between: write a collision marker to
 *      LBA 1, say "COLLISION" on COM1 and stop; else write its new record to LBA 0;
 *   s  shareable disk: write its record to its own slot, LBA 8 + slot, never another's;
 *   r  read-only disk: read LBA 0; once per boot try a write, which must fail (a write
 *      that succeeds is reported on COM1); the failure is survived.
 * A record is 36 bytes at the start of a sector: "VDLMREC1", the 16-byte writer id,
 * a per-boot nonce (rdtsc), the loop counter, and the XOR of the eight dwords before.
 * One loop every TICKS_PER_LOOP timer ticks (hlt; the BIOS timer ticks 18.2 times a second),
 * so that a writer costs its node little under nested emulation; every write of another
 * writer is still seen at the next loop.
 * Built with the GNU assembler and linker (make guest): .code16, linked at 0x7c00.
 */
    .code16
    .set LOAD_SECTORS, 3          /* sectors after the boot sector */
    .set TICKS_PER_LOOP, 4        /* about 4.5 loops a second */
    .set FWCFG_SEL,  0x510
    .set FWCFG_DATA, 0x511
    .set FWCFG_SIG,  0x0000
    .set FWCFG_DIR,  0x0019
    .set FWCFG_NAME_BYTES, 56
    .set CFG,     0x9000          /* the configuration string, NUL-terminated */
    .set CFG_MAX, 255
    .set MODES,   0x9100          /* mode letters, one per data disk, NUL-terminated */
    .set SLOT,    0x9140
    .set REC,     0x9200          /* this writer's record */
    .set RB,      0x9400          /* a sector read back */
    .set MARK,    0x9600          /* the collision marker */
    .set COUNTER, 0x9804
    .set BOOTDRV, 0x9808
    .set FUNC,    0x9809
    .set ROTRIED, 0x980a
    .set DRIVE,   0x980b
    .set DAP,     0x9810
    .set PREV,    0x9840          /* the record of the last loop */
    .set WROTE,   0x9880          /* per data disk: 1 if its last record write succeeded */
    .set MAX_DISKS, 16
    .set REC_BYTES, 36
    .set ID_BYTES, 16
    .set SHARED_BASE_LBA, 8
    .set FIRST_DATA_DRIVE, 0x81
    .set COM1,    0x3f8

    .text
    .globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7c00, %sp
    sti
    ljmp $0, $stage1
stage1:
    cld
    mov %dl, BOOTDRV
    movw $0x0010, DAP             /* load the rest of the program behind this sector */
    movw $LOAD_SECTORS, DAP + 2
    movw $0x7e00, DAP + 4
    movw $0, DAP + 6
    movl $1, DAP + 8
    movl $0, DAP + 12
    mov $DAP, %si
    mov $0x42, %ah
    int $0x13
    jc load_failed
    jmp stage2
load_failed:
    mov $no_load, %si
    call puts
    jmp halt

/* puts: the NUL-terminated string at %si to COM1. Clobbers %al, %dx, %si. */
puts:
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

halt:
    cli
    hlt
    jmp halt

no_load:    .asciz "WRITER: CANNOT LOAD\r\n"

    .org 510
    .byte 0x55, 0xaa

/* ---- sector 1 onwards, loaded at 0x7e00 ---- */
stage2:
    call read_config
    jc bad_config
    mov $REC, %di                 /* the constant part of the record */
    xor %ax, %ax
    mov $256, %cx
    rep stosw
    mov $REC, %di
    mov $rec_magic, %si
    mov $8, %cx
    rep movsb
    mov $ID, %si
    mov $ID_BYTES, %cx
    rep movsb
    rdtsc
    mov %eax, REC + 24
    movl $0, COUNTER
    movb $0, ROTRIED
    mov $WROTE, %di
    xor %al, %al
    mov $MAX_DISKS, %cx
    rep stosb
    mov $hello, %si
    call puts
    jmp first_loop

main_loop:
    sti
    mov $TICKS_PER_LOOP, %cx
1:  hlt                           /* wait for the next timer tick */
    loop 1b
first_loop:
    mov $REC, %si                 /* what the last loop wrote */
    mov $PREV, %di
    mov $REC_BYTES, %cx
    rep movsb
    incl COUNTER
    mov COUNTER, %eax
    mov %eax, REC + 28
    xor %eax, %eax                /* checksum: XOR of dwords 0..7 */
    mov $REC, %si
    mov $8, %cx
1:  xor (%si), %eax
    add $4, %si
    loop 1b
    mov %eax, REC + 32

    mov $MODES, %bp
    movb $FIRST_DATA_DRIVE, DRIVE
disk_loop:
    mov (%bp), %al
    test %al, %al
    jz main_loop
    mov DRIVE, %dl
    cmp $'x', %al
    je exclusive
    cmp $'s', %al
    je shareable
    cmp $'r', %al
    je readonly
next_disk:
    inc %bp
    incb DRIVE
    jmp disk_loop

exclusive:
    mov %bp, %bx                  /* did our last write to this disk succeed? */
    sub $MODES, %bx
    testb $1, WROTE(%bx)
    jz 1f
    xor %ax, %ax                  /* then LBA 0 must still hold it */
    push %bx
    mov $RB, %bx
    call read_sector
    pop %bx
    jc 1f
    mov $PREV, %si
    mov $RB, %di
    mov $REC_BYTES, %cx
    repe cmpsb
    jne collided
1:  xor %ax, %ax
    push %bx
    mov $REC, %bx
    call write_sector
    pop %bx
    setnc WROTE(%bx)
    jmp next_disk
collided:
    mov $MARK, %di                /* someone else wrote: mark it and stop */
    mov $REC, %si
    mov $256, %cx
    rep movsw
    mov $MARK, %di
    mov $coll_magic, %si
    mov $8, %cx
    rep movsb
    mov $MARK + 64, %di
    mov $RB, %si
    mov $REC_BYTES, %cx
    rep movsb
    mov $1, %ax
    mov $MARK, %bx
    call write_sector
    mov $collision, %si
    call puts
    jmp halt

shareable:
    movzbw SLOT, %ax
    add $SHARED_BASE_LBA, %ax
    mov $REC, %bx
    call write_sector
    jmp next_disk

readonly:
    xor %ax, %ax
    mov $RB, %bx
    call read_sector
    testb $1, ROTRIED
    jnz next_disk
    movb $1, ROTRIED
    xor %ax, %ax
    mov $REC, %bx
    call write_sector
    jc next_disk
    mov $ro_written, %si
    call puts
    jmp next_disk

bad_config:
    mov $no_config, %si
    call puts
    jmp halt

/* read_sector / write_sector: LBA in %ax, buffer in %bx, BIOS drive in %dl.
 * Carry set on failure. Clobbers %ax. */
read_sector:
    movb $0x42, FUNC
    jmp rw_sector
write_sector:
    movb $0x43, FUNC
rw_sector:
    push %si
    push %dx
    movw $0x0010, DAP
    movw $1, DAP + 2
    mov %bx, DAP + 4
    movw $0, DAP + 6
    mov %ax, DAP + 8
    movw $0, DAP + 10
    movl $0, DAP + 12
    mov $DAP, %si
    mov FUNC, %ah
    xor %al, %al
    int $0x13
    pop %dx
    pop %si
    ret

/* fw_cfg_select: select item %ax (fw_cfg's selector port is little-endian). */
fw_cfg_select:
    mov $FWCFG_SEL, %dx
    out %ax, %dx
    ret

/* fw_cfg_read: %cx bytes of the selected item to %es:%di. */
fw_cfg_read:
    mov $FWCFG_DATA, %dx
    rep insb
    ret

/* fw_cfg_skip: drop %cx bytes of the selected item. */
fw_cfg_skip:
    mov $FWCFG_DATA, %dx
1:  in %dx, %al
    loop 1b
    ret

/* read_config: find our fw_cfg file, parse "MODES:SLOT:ID". Carry set when absent. */
read_config:
    mov $FWCFG_DIR, %ax
    call fw_cfg_select
    mov $RB, %di                  /* the count: u32, big-endian */
    mov $4, %cx
    call fw_cfg_read
    mov RB + 2, %bx
    xchg %bl, %bh                 /* fewer than 65536 files */
dir_entry:
    test %bx, %bx
    jz no_file
    dec %bx
    mov $RB, %di                  /* size u32 BE, select u16 BE, reserved u16, name[56] */
    mov $8 + FWCFG_NAME_BYTES, %cx
    call fw_cfg_read
    mov $RB + 8, %si
    mov $cfg_name, %di
    mov $cfg_name_end - cfg_name, %cx
    repe cmpsb
    jne dir_entry
    mov RB + 2, %cx               /* size (< 64 KiB) */
    xchg %cl, %ch
    cmp $CFG_MAX, %cx
    ja no_file
    mov RB + 4, %ax               /* selector */
    xchg %al, %ah
    push %cx
    call fw_cfg_select
    pop %cx
    mov $CFG, %di
    mov %cx, %bx
    call fw_cfg_read
    movb $0, CFG(%bx)
    mov $CFG, %si                 /* modes, up to ':' */
    mov $MODES, %di
2:  lodsb
    test %al, %al
    jz no_file
    cmp $':', %al
    je 3f
    stosb
    jmp 2b
3:  movb $0, (%di)
    lodsb                         /* the slot */
    sub $'0', %al
    mov %al, SLOT
    lodsb
    cmp $':', %al
    jne no_file
    mov $ID, %di                  /* the id: the rest, NUL-padded to 16 bytes */
    mov $ID_BYTES, %cx
4:  lodsb
    test %al, %al
    jz 5f
    stosb
    loop 4b
    clc
    ret
5:  xor %al, %al
    rep stosb
    clc
    ret
no_file:
    stc
    ret

cfg_name:   .asciz "opt/org.virtdlm/writer"
cfg_name_end:
rec_magic:  .ascii "VDLMREC1"
coll_magic: .ascii "VDLMCOLL"
hello:      .asciz "WRITER\r\n"
collision:  .asciz "COLLISION\r\n"
ro_written: .asciz "RO-WRITE-OK\r\n"
no_config:  .asciz "WRITER: NO CONFIGURATION\r\n"
ID:         .fill ID_BYTES, 1, 0

    .org 512 * (1 + LOAD_SECTORS)
