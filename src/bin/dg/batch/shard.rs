//! Which rows this process runs: `--shard K/N`, else torchrun-style `RANK`/`WORLD_SIZE`. Row `i`
//! belongs to shard `i % N`, so every row has exactly one shard and the shards stay balanced
//! whatever the order of the input.
use diffgentor::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// `--shard K/N` when given, else `RANK`/`WORLD_SIZE` from the environment, else the whole
    /// input.
    pub fn resolve(flag: Option<&str>) -> diffgentor::Result<Shard> {
        if let Some(text) = flag {
            return Shard::parse(text)
                .map_err(|why| Error::InvalidArg(format!("--shard {text}: {why}")));
        }
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        match (var("RANK"), var("WORLD_SIZE")) {
            (Some(rank), Some(world)) => Shard::parse(&format!("{}/{}", rank.trim(), world.trim()))
                .map_err(|why| Error::InvalidArg(format!("RANK={rank} WORLD_SIZE={world}: {why}"))),
            _ => Ok(Shard::WHOLE),
        }
    }

    fn parse(text: &str) -> Result<Shard, String> {
        let (k, n) = text
            .split_once('/')
            .ok_or("expected K/N, e.g. 0/4 (shards are numbered from 0)")?;
        let number = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}` is not a whole number"))
        };
        let (index, count) = (number(k)?, number(n)?);
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index} of {count} does not exist (0 <= K < N)"
            ));
        }
        Ok(Shard { index, count })
    }

    pub fn owns(&self, row: usize) -> bool {
        row % self.count == self.index
    }

    /// The manifest this shard appends to: `manifest.jsonl` for the whole input, else its own
    /// part, which `dg manifest merge` joins.
    pub fn manifest_name(&self) -> String {
        if *self == Shard::WHOLE {
            "manifest.jsonl".into()
        } else {
            format!("manifest.part-{:05}-of-{:05}.jsonl", self.index, self.count)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_exactly_one_shard() {
        let shards: Vec<Shard> = (0..3).map(|index| Shard { index, count: 3 }).collect();
        for row in 0..100 {
            assert_eq!(shards.iter().filter(|s| s.owns(row)).count(), 1);
        }
    }

    #[test]
    fn shard_flags_are_checked() {
        assert_eq!(Shard::parse("2/3"), Ok(Shard { index: 2, count: 3 }));
        assert!(Shard::parse("3/3").unwrap_err().contains("does not exist"));
        assert!(Shard::parse("0/0").unwrap_err().contains("does not exist"));
        assert!(Shard::parse("1").unwrap_err().contains("expected K/N"));
        assert!(Shard::parse("a/2")
            .unwrap_err()
            .contains("`a` is not a whole number"));
        assert_eq!(Shard::WHOLE.manifest_name(), "manifest.jsonl");
        assert_eq!(
            Shard { index: 1, count: 3 }.manifest_name(),
            "manifest.part-00001-of-00003.jsonl"
        );
    }
}
