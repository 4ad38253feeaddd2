//! `mock-http [ADDRESS]`: the tests' HTTP service on its own (default
//! 127.0.0.1:8088), for trying the `checkout` example by hand. It prints
//! each request as it comes, and answers a repeated `Idempotency-Key` as it
//! did the first time.

use durable_tests::HttpService;

fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8088".to_owned());
    let service = HttpService::bind(&address, |call| {
        let key = call.idempotency_key.as_deref().unwrap_or("-");
        let seen = if call.repeat {
            "repeat, same answer"
        } else {
            "new"
        };
        println!(
            "{} {}  Idempotency-Key: {key}  ({seen})",
            call.method, call.path
        );
    });
    match service {
        Ok(service) => {
            println!("mock-http: listening on {}", service.url());
            loop {
                std::thread::park();
            }
        }
        Err(error) => {
            eprintln!("mock-http: cannot listen on {address}: {error}");
            std::process::exit(1);
        }
    }
}
