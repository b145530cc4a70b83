/* The writer guest: a 512-byte boot sector that writes its disks through the BIOS.
 *
 * SeaBIOS loads it from the domain's read-only boot disk (drive 0x80). Sector 1 of that
 * disk is its configuration, written by the lab (lab/guest.py): a writer id, a slot and
 * one (BIOS drive, mode) pair per data disk. It then loops forever:
 *   x  exclusive disk: write its record to LBA 0, read it back; if what comes back is not
 *      its own record, another writer wrote in between: write a collision marker to
 *      LBA 1, say "COLLISION" on COM1 and stop;
 *   s  shareable disk: write its record to its own slot, LBA 8 + slot, never another's;
 *   r  read-only disk: read LBA 0; once per boot try a write, which must fail (a write
 *      that succeeds is reported on COM1); the failure is survived.
 * A record is 36 bytes at the start of a sector: "VDLMREC1", the 16-byte writer id,
 * a per-boot nonce (rdtsc), the loop counter, and the XOR of the eight dwords before.
 * Built with the GNU assembler and linker (make guest): .code16, linked at 0x7c00.
 */
    .code16
    .set CFG,     0x7e00          /* sector 1 of the boot disk */
    .set CFG_ID,  CFG + 8
    .set CFG_SLOT, CFG + 24
    .set CFG_N,   CFG + 25
    .set CFG_DISKS, CFG + 26
    .set REC,     0x8000          /* this writer's record */
    .set RB,      0x8200          /* a sector read back */
    .set MARK,    0x8400          /* the collision marker */
    .set NONCE,   0x8800
    .set COUNTER, 0x8804
    .set BOOTDRV, 0x8808
    .set FUNC,    0x8809
    .set ROTRIED, 0x880a
    .set DAP,     0x8810
    .set REC_BYTES, 36
    .set SHARED_BASE_LBA, 8
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
    ljmp $0, $start
start:
    cld
    mov %dl, BOOTDRV
    movb $0, ROTRIED
    mov $1, %ax                   /* the configuration sector */
    mov $CFG, %bx
    call read_sector
    jc bad_config
    mov $CFG, %si
    mov $cfg_magic, %di
    mov $8, %cx
    repe cmpsb
    jne bad_config

    mov $REC, %di                 /* the constant part of the record */
    xor %ax, %ax
    mov $256, %cx
    rep stosw
    mov $REC, %di
    mov $rec_magic, %si
    mov $8, %cx
    rep movsb
    mov $CFG_ID, %si
    mov $16, %cx
    rep movsb
    rdtsc
    mov %eax, REC + 24
    movl $0, COUNTER
    mov $hello, %si
    call puts

main_loop:
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

    movzbw CFG_N, %cx
    mov $CFG_DISKS, %bp
disk_loop:
    jcxz main_loop
    push %cx
    mov (%bp), %dl
    mov 1(%bp), %al
    cmp $'x', %al
    je exclusive
    cmp $'s', %al
    je shareable
    cmp $'r', %al
    je readonly
next_disk:
    pop %cx
    add $2, %bp
    dec %cx
    jmp disk_loop

exclusive:
    xor %ax, %ax
    mov $REC, %bx
    call write_sector
    jc next_disk
    xor %ax, %ax
    mov $RB, %bx
    call read_sector
    jc next_disk
    mov $REC, %si
    mov $RB, %di
    mov $REC_BYTES, %cx
    repe cmpsb
    je next_disk
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
halt:
    cli
    hlt
    jmp halt

shareable:
    movzbw CFG_SLOT, %ax
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

/* puts: the NUL-terminated string at %si to COM1. Clobbers %al, %dx, %si. */
puts:
    mov $COM1, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:  ret

cfg_magic:  .ascii "VDLMCFG1"
rec_magic:  .ascii "VDLMREC1"
coll_magic: .ascii "VDLMCOLL"
hello:      .asciz "WRITER\r\n"
collision:  .asciz "COLLISION\r\n"
ro_written: .asciz "RO-WRITE-OK\r\n"
no_config:  .asciz "NO-CONFIG\r\n"

    .org 510
    .byte 0x55, 0xaa
