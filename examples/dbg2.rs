use mproc::Pool;
fn f(x: u64) -> u64 {
    x
}
fn main() {
    for i in 0..3000 {
        let k = i % 4;
        let p = Pool::new(2).unwrap();
        if k == 1 || k == 3 {
            p.apply(f, 1).unwrap();
        }
        if k < 2 {
            p.close();
            p.join().unwrap();
        }
        drop(p);
        if i % 500 == 0 {
            eprintln!("{i}");
        }
    }
    eprintln!("done");
}
